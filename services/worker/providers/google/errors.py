"""Gemini errors -> the gateway's error tree (wire-formats doc §3.6, §6.1).

Gemini's envelope is a google.rpc.Status, sometimes wrapped in a one-element array:
{"error": {"code", "message", "status", "details": [{"@type": ...RetryInfo|QuotaFailure|
ErrorInfo, ...}]}}. It sends no rate-limit headers; the wait hint is `RetryInfo.retryDelay`.

    429 per-minute RESOURCE_EXHAUSTED       -> Retryable 429, retry_after_s from retryDelay
    429 per-day quota / very long retryDelay -> Final 503 insufficient_quota
    408, 500, 502, 503, 504 (any 5xx)        -> Retryable (timeout / overloaded / upstream)
    400 with ErrorInfo API_KEY_INVALID, 401, 403 -> Final 502 upstream_auth_error (no text echoed)
    400 INVALID_ARGUMENT, FAILED_PRECONDITION -> Final 400 (context_length_exceeded if it says so)
    404                                      -> Final 404 model_not_found
    anything else                            -> Final 502 upstream_error
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import orjson

from shared.errors import FinalProviderError, ProviderError, RetryableProviderError

# The OpenAI SDK ignores longer hints; ours are capped to this too.
MAX_RETRY_AFTER_S = 120.0
# A "retry in" longer than this is a quota that will not come back within the request's
# life: fail now (and tell the operator) rather than rotate through rate-limit retries.
LONG_RETRY_DELAY_S = 300.0

_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_RETRY_IN_TEXT = re.compile(r"retry in (\d+(?:\.\d+)?)\s*s", re.IGNORECASE)
_CONTEXT_TOO_LONG = re.compile(
    r"input token count.*exceeds|exceeds the maximum number of tokens|context (window|length)"
    r"|prompt is too long|too many tokens",
    re.IGNORECASE,
)


def error_object(data: Any) -> Mapping[str, Any] | None:
    """The `error` object of a Gemini envelope (plain or array-wrapped), if any."""
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if isinstance(data, Mapping):
        err = data.get("error")
        if isinstance(err, Mapping):
            return err
    return None


def parse_duration_s(value: object) -> float | None:
    """Seconds in a protobuf Duration string ("38s", "1.5s"), or None."""
    if not isinstance(value, str):
        return None
    match = _DURATION.match(value)
    return float(match.group(1)) if match else None


def _details(err: Mapping[str, Any], type_url: str) -> list[Mapping[str, Any]]:
    details = err.get("details")
    if not isinstance(details, list):
        return []
    return [d for d in details if isinstance(d, Mapping) and d.get("@type") == type_url]


def _retry_delay_s(err: Mapping[str, Any], message: str) -> float | None:
    for info in _details(err, _RETRY_INFO):
        delay = parse_duration_s(info.get("retryDelay"))
        if delay is not None:
            return delay
    match = _RETRY_IN_TEXT.search(message)
    return float(match.group(1)) if match else None


def _is_daily_quota(err: Mapping[str, Any]) -> bool:
    for failure in _details(err, _QUOTA_FAILURE):
        for violation in failure.get("violations") or ():
            if isinstance(violation, Mapping) and "PerDay" in str(violation.get("quotaId") or ""):
                return True
    return False


def _is_bad_key(err: Mapping[str, Any], message: str) -> bool:
    if any(info.get("reason") == "API_KEY_INVALID" for info in _details(err, _ERROR_INFO)):
        return True
    return "api key not valid" in message.lower()


def classify_gemini_error(
    status: int, headers: Mapping[str, str], body: bytes, provider: str
) -> ProviderError:
    """Map a Gemini HTTP error response into the error tree."""
    data: Any = None
    if body:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None  # a proxy's page: the status decides
    return classify_status(status, error_object(data) or {}, provider)


def classify_status(status: int, err: Mapping[str, Any], provider: str) -> ProviderError:
    """Classify a Gemini error object given the HTTP status it came with (or its `code`)."""
    raw_message = err.get("message")
    message = raw_message if isinstance(raw_message, str) and raw_message else ""
    rpc_status = str(err.get("status") or "")
    common: dict[str, Any] = {"provider": provider, "upstream_status": status}

    if status in (401, 403) or (status == 400 and _is_bad_key(err, message)):
        # The operator's key is wrong. Never echo the upstream text: it can quote the key.
        return FinalProviderError(
            f"{provider} rejected the gateway's credentials (HTTP {status})",
            status=502,
            error_type="server_error",
            code="upstream_auth_error",
            **common,
        )
    if status == 429:
        delay = _retry_delay_s(err, message)
        if _is_daily_quota(err) or (delay is not None and delay > LONG_RETRY_DELAY_S):
            return FinalProviderError(
                f"{provider}: the gateway's upstream quota is exhausted",
                status=503,
                error_type="insufficient_quota",
                code="insufficient_quota",
                **common,
            )
        retry_after = None if delay is None else min(max(delay, 0.0), MAX_RETRY_AFTER_S)
        return RetryableProviderError(
            message or f"{provider} rate limited the request",
            status=429,
            error_type="requests",
            code="rate_limit_exceeded",
            retry_after_s=retry_after,
            headers={"retry-after": str(math.ceil(retry_after))} if retry_after else None,
            **common,
        )
    if status == 408 or status >= 500:
        gateway_status, code = 502, "upstream_error"
        if status in (408, 504):
            gateway_status, code = 504, "timeout"
        elif status == 503:
            gateway_status, code = 503, "overloaded"
        return RetryableProviderError(
            message or f"{provider} returned HTTP {status}",
            status=gateway_status,
            error_type="server_error",
            code=code,
            **common,
        )
    if status == 404:
        return FinalProviderError(
            message or f"{provider} does not know the requested model",
            status=404,
            code="model_not_found",
            **common,
        )
    if status in (400, 413, 422) or rpc_status in ("INVALID_ARGUMENT", "FAILED_PRECONDITION"):
        code = "context_length_exceeded" if _CONTEXT_TOO_LONG.search(message) else "invalid_value"
        return FinalProviderError(
            message or f"{provider} rejected the request (HTTP {status})",
            status=413 if status == 413 else 400,
            code=code,
            **common,
        )
    return FinalProviderError(
        message or f"{provider} returned HTTP {status}",
        status=502,
        error_type="server_error",
        code="upstream_error",
        **common,
    )


def stream_error(err: Mapping[str, Any], provider: str) -> ProviderError:
    """An `error` object that arrived inside a 200 response or stream."""
    code = err.get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    return classify_status(status, err, provider)
