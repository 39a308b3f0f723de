"""Anthropic failures -> the gateway's error tree (wire-formats doc §2.6, §6.1).

Anthropic's envelope is {"type": "error", "error": {"type", "message"}, "request_id"},
as an HTTP error body or as an `event: error` inside a 200 stream. Classification:

    429 rate_limit_error, 5xx, 529 overloaded_error,   -> RetryableProviderError
    408/409, api_error, timeout_error                     (retry-after honoured)
    400 invalid_request_error, 404, 413, 422           -> FinalProviderError, upstream message kept
                                                          (context too long: context_length_exceeded)
    401 authentication_error, 403 permission_error     -> FinalProviderError 502 upstream_auth_error
    402 billing_error, "credit balance is too low"     -> FinalProviderError 503 insufficient_quota

Requests Anthropic cannot take are refused before any call, with `invalid()` and
`unsupported()`: a 400 naming the client's parameter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import orjson

from services.worker.providers.openai_compat import parse_retry_after
from shared.errors import FinalProviderError, ProviderError, RetryableProviderError

_RETRYABLE_STATUSES = frozenset({408, 409, 429})
_CONTEXT_TOO_LONG = re.compile(
    r"prompt is too long|context limit|context window|context length|maximum context",
    re.IGNORECASE,
)
# Anthropic reports an exhausted prepaid balance as a plain 400 invalid_request_error.
_NO_CREDIT = re.compile(r"credit balance is too low", re.IGNORECASE)

# error.type -> HTTP status, for errors that arrive without one (stream `error` events).
_STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def invalid(message: str, param: str | None, code: str = "invalid_value") -> FinalProviderError:
    """A 400 for the client: the request cannot be expressed for Anthropic."""
    return FinalProviderError(
        message, status=400, error_type="invalid_request_error", code=code, param=param
    )


def unsupported(param: str, why: str) -> FinalProviderError:
    """A 400 for a parameter or content Anthropic has no equivalent for."""
    message = f"'{param}' is not supported by Anthropic models: {why}"
    return invalid(message, param, code="unsupported_parameter")


def parse_envelope(body: bytes) -> tuple[str | None, str | None]:
    """(error.type, error.message) from an Anthropic error body; Nones for anything else
    (a CDN or proxy page is classified by its status alone)."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None, None
    return _fields(data) if isinstance(data, dict) else (None, None)


def _fields(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    err = data.get("error")
    if not isinstance(err, dict):
        return None, None
    kind, message = err.get("type"), err.get("message")
    return (
        kind if isinstance(kind, str) and kind else None,
        message if isinstance(message, str) and message else None,
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():  # plain dicts are not case-insensitive
        if key.lower() == name:
            return value
    return None


def classify_error(
    status: int, headers: Mapping[str, str], body: bytes, provider: str
) -> ProviderError:
    """Map a non-2xx Anthropic response into the error tree."""
    err_type, message = parse_envelope(body)
    should_retry = (_header(headers, "x-should-retry") or "").strip().lower()
    retryable = status in _RETRYABLE_STATUSES or status >= 500
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    return _classify(
        status,
        err_type,
        message,
        provider,
        retryable=retryable,
        retry_after_s=parse_retry_after(headers),
        upstream_status=status,
    )


def error_from_payload(data: Mapping[str, Any], provider: str) -> ProviderError:
    """The error for an Anthropic error object met after HTTP 200 (an `event: error`, or
    a 200 body that is an error envelope). Overloaded and API errors are retryable."""
    err_type, message = _fields(data)
    status = _STATUS_OF_TYPE.get(err_type or "", 500)
    retryable = status in _RETRYABLE_STATUSES or status >= 500
    # The HTTP status was 200; `status` here only stands for the error's kind.
    return _classify(
        status,
        err_type,
        message,
        provider,
        retryable=retryable,
        retry_after_s=None,
        upstream_status=None,
    )


def _classify(
    status: int,
    err_type: str | None,
    message: str | None,
    provider: str,
    *,
    retryable: bool,
    retry_after_s: float | None,
    upstream_status: int | None,
) -> ProviderError:
    common: dict[str, Any] = {"provider": provider, "upstream_status": upstream_status}
    if status in (401, 403) or err_type in ("authentication_error", "permission_error"):
        # The operator's key is wrong or lacks access. The upstream text is not echoed:
        # the client cannot act on it, and such texts can quote the key.
        return FinalProviderError(
            f"{provider} rejected the gateway's credentials (HTTP {status})",
            status=502,
            error_type="server_error",
            code="upstream_auth_error",
            **common,
        )
    if status == 402 or err_type == "billing_error" or _NO_CREDIT.search(message or ""):
        return FinalProviderError(
            f"{provider}: the gateway's upstream quota is exhausted",
            status=503,
            error_type="insufficient_quota",
            code="insufficient_quota",
            **common,
        )
    if retryable:
        gateway_status, gateway_type, code = _retryable_shape(status, err_type)
        hint = (
            {"retry-after": str(math.ceil(retry_after_s))}
            if retry_after_s is not None and gateway_status in (429, 503)
            else None
        )
        return RetryableProviderError(
            message or f"{provider} returned HTTP {status}",
            status=gateway_status,
            error_type=gateway_type,
            code=code,
            retry_after_s=retry_after_s,
            headers=hint,
            **common,
        )
    if status == 404 or err_type == "not_found_error":
        return FinalProviderError(
            message or f"{provider} does not know this model or path (HTTP 404)",
            status=404,
            code="model_not_found",
            **common,
        )
    if status == 413 or err_type == "request_too_large":
        # Often produced by a CDN before the API, with an HTML body.
        return FinalProviderError(
            message or f"The request is too large for {provider}.",
            status=413,
            code="request_too_large",
            **common,
        )
    if status in (400, 422):
        too_long = bool(_CONTEXT_TOO_LONG.search(message or ""))
        return FinalProviderError(
            message or f"{provider} rejected the request (HTTP {status})",
            status=400,
            param="messages" if too_long else None,
            code="context_length_exceeded" if too_long else "invalid_value",
            **common,
        )
    # Any other refusal (405, 410, a 5xx the upstream said not to retry...) is no fault
    # of the client's request, and another attempt on this provider will not help.
    return FinalProviderError(
        message or f"{provider} returned HTTP {status}",
        status=502,
        error_type="server_error",
        code="upstream_error",
        **common,
    )


def _retryable_shape(status: int, err_type: str | None) -> tuple[int, str, str]:
    """(gateway status, OpenAI type, code) should this be the last error the client sees."""
    if status == 429 or err_type == "rate_limit_error":
        return 429, "requests", "rate_limit_exceeded"
    if status in (408, 504, 524) or err_type == "timeout_error":
        return 504, "server_error", "timeout"
    if status in (503, 529) or err_type == "overloaded_error":
        return 503, "server_error", "overloaded"
    return 502, "server_error", "upstream_error"
