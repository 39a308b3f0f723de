"""The gateway's error tree. Every error a client can see is one of these, rendered once.

    GatewayError                      (status, OpenAI type/code)
    ├── ClientError                   4xx, returned at once, no state changed
    │   ├── InvalidRequest            400 invalid_request_error
    │   ├── Unauthorized              401 invalid_api_key
    │   ├── InsufficientFunds         402 insufficient_quota
    │   ├── Forbidden                 403
    │   ├── NotFound / ModelNotFound  404 model_not_found
    │   ├── PayloadTooLarge           413
    │   └── RateLimited               429 rate_limit_exceeded (+ Retry-After)
    ├── ServiceUnavailable            503 (Redis down, no live worker)
    ├── GatewayTimeout                504 (deadline passed)
    └── ProviderError                 from an upstream call
        ├── RetryableProviderError    technical: next candidate (timeout, connect, 429, 5xx)
        └── FinalProviderError        business: straight back to the client

`to_body()` renders OpenAI's envelope: {"error": {message, type, param, code}}.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.param = param
        self.http_status = status if status is not None else self.status
        self.error_type = error_type if error_type is not None else self.type
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.http_status}, {self.code!r}, {self.message!r})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_body(self) -> bytes:
        return orjson.dumps(self.to_dict())


class ClientError(GatewayError):
    status = 400
    type = "invalid_request_error"


class InvalidRequest(ClientError):
    default_code = "invalid_value"


class Unauthorized(ClientError):
    status = 401
    default_code = "invalid_api_key"


class InsufficientFunds(ClientError):
    status = 402
    type = "insufficient_quota"
    default_code = "insufficient_quota"


class Forbidden(ClientError):
    status = 403
    default_code = "forbidden"


class NotFound(ClientError):
    status = 404
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class MethodNotAllowed(ClientError):
    status = 405
    default_code = "method_not_allowed"


class PayloadTooLarge(ClientError):
    status = 413
    default_code = "request_too_large"


class RateLimited(ClientError):
    status = 429
    type = "requests"
    default_code = "rate_limit_exceeded"


class ServiceUnavailable(GatewayError):
    status = 503
    default_code = "service_unavailable"


class GatewayTimeout(GatewayError):
    status = 504
    default_code = "timeout"


class ProviderError(GatewayError):
    """An upstream failure. `provider` and `upstream_status` say where it came from."""

    status = 502
    default_code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        upstream_status: int | None = None,
        retry_after_s: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.provider = provider
        self.upstream_status = upstream_status
        self.retry_after_s = retry_after_s

    @property
    def error_class(self) -> str:
        return "technical" if isinstance(self, RetryableProviderError) else "business"


class RetryableProviderError(ProviderError):
    """Technical failure: timeouts, connection errors, 408/409/429, 5xx, overloaded."""


class FinalProviderError(ProviderError):
    """Business failure: the request itself is wrong for the upstream; no other provider helps."""

    status = 400
    type = "invalid_request_error"
    default_code = "invalid_value"


def error_from_dict(status: int, body: dict[str, Any]) -> GatewayError:
    """Rebuild an error that crossed Redis as (status, OpenAI envelope)."""
    err = body.get("error") or {}
    return GatewayError(
        str(err.get("message") or "error"),
        code=err.get("code"),
        param=err.get("param"),
        status=status,
        error_type=str(err.get("type") or "server_error"),
    )
