"""Anthropic failures -> the gateway's error tree (wire-formats doc §2.6, §6.1)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.types import ErrorResponse
from multidict import CIMultiDict

from services.worker.providers.anthropic.errors import classify_error, error_from_payload
from shared.errors import FinalProviderError, ProviderError, RetryableProviderError
from tests.oracles import validate_openai


def envelope(err_type: str, message: str) -> bytes:
    body = {"type": "error", "error": {"type": err_type, "message": message},
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}  # fmt: skip
    # The fixture is what the SDK itself parses; `request_too_large` comes from Anthropic's
    # CDN and is documented, but is not in the SDK's ErrorObject union.
    if err_type != "request_too_large":
        ErrorResponse.model_validate(body)
    return orjson.dumps(body)


def classify(status: int, body: bytes, headers: dict[str, str] | None = None) -> ProviderError:
    error = classify_error(status, CIMultiDict(headers or {}), body, "anthropic")
    assert error.provider == "anthropic"
    assert error.upstream_status == status
    validate_openai("ErrorResponse", error.to_dict())
    return error


# (status, error.type, message, headers) -> (class, gateway status, OpenAI type, code)
TABLE: list[tuple[int, str, str, dict[str, str], type[ProviderError], int, str, str]] = [
    (529, "overloaded_error", "Overloaded", {}, RetryableProviderError, 503, "server_error",
     "overloaded"),
    (500, "api_error", "Internal server error", {}, RetryableProviderError, 502, "server_error",
     "upstream_error"),
    (504, "timeout_error", "Request timed out", {}, RetryableProviderError, 504, "server_error",
     "timeout"),
    (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit",
     {"retry-after": "7"}, RetryableProviderError, 429, "requests", "rate_limit_exceeded"),
    (400, "invalid_request_error", ("messages.1.content.0.text: text content blocks must be "
     "non-empty"), {}, FinalProviderError, 400, "invalid_request_error", "invalid_value"),
    (400, "invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum", {},
     FinalProviderError, 400, "invalid_request_error", "context_length_exceeded"),
    (400, "invalid_request_error", ("input length and `max_tokens` exceed context limit: "
     "197022 + 21333 > 200000, decrease input length or `max_tokens` and try again"), {},
     FinalProviderError, 400, "invalid_request_error", "context_length_exceeded"),
    (404, "not_found_error", "model: claude-9", {}, FinalProviderError, 404,
     "invalid_request_error", "model_not_found"),
    (413, "request_too_large", "Request exceeds the maximum allowed number of bytes.", {},
     FinalProviderError, 413, "invalid_request_error", "request_too_large"),
    (402, "billing_error", "Your account has no credit", {}, FinalProviderError, 503,
     "insufficient_quota", "insufficient_quota"),
    (400, "invalid_request_error", ("Your credit balance is too low to access the Anthropic "
     "API."), {}, FinalProviderError, 503, "insufficient_quota", "insufficient_quota"),
    (401, "authentication_error", "invalid x-api-key sk-ant-api03-SECRET", {},
     FinalProviderError, 502, "server_error", "upstream_auth_error"),
    (403, "permission_error", "Your API key sk-ant-api03-SECRET does not have permission", {},
     FinalProviderError, 502, "server_error", "upstream_auth_error"),
    (500, "api_error", "Internal server error", {"x-should-retry": "false"}, FinalProviderError,
     502, "server_error", "upstream_error"),
    (409, "invalid_request_error", "Conflict", {}, RetryableProviderError, 502, "server_error",
     "upstream_error"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "err_type", "message", "headers", "cls", "gw_status", "oa_type", "code"), TABLE
)
def test_classification_table(
    status: int,
    err_type: str,
    message: str,
    headers: dict[str, str],
    cls: type[ProviderError],
    gw_status: int,
    oa_type: str,
    code: str,
) -> None:
    error = classify(status, envelope(err_type, message), headers)
    assert type(error) is cls
    assert (error.http_status, error.error_type, error.code) == (gw_status, oa_type, code)
    assert "SECRET" not in error.message  # an upstream text quoting the key never leaks
    if cls is FinalProviderError and gw_status in (400, 404, 413):
        assert error.message == message  # the client sees what Anthropic objected to


def test_context_too_long_names_the_messages_param() -> None:
    error = classify(400, envelope("invalid_request_error", "prompt is too long: 9 > 8"))
    assert error.param == "messages"


def test_retry_after_is_honoured_and_passed_on() -> None:
    error = classify(429, envelope("rate_limit_error", "slow down"), {"Retry-After": "12"})
    assert error.retry_after_s == 12
    assert error.headers == {"retry-after": "12"}
    overloaded = classify(529, envelope("overloaded_error", "Overloaded"), {"retry-after": "3"})
    assert overloaded.retry_after_s == 3
    assert overloaded.headers == {"retry-after": "3"}


@pytest.mark.parametrize(
    ("status", "cls", "code"),
    [
        (413, FinalProviderError, "request_too_large"),
        (502, RetryableProviderError, "upstream_error"),
        (503, RetryableProviderError, "overloaded"),
        (405, FinalProviderError, "upstream_error"),
    ],
)
def test_non_json_bodies_are_classified_by_status(
    status: int, cls: type[ProviderError], code: str
) -> None:
    error = classify(status, b"<html><body>Bad Gateway</body></html>")
    assert type(error) is cls
    assert error.code == code
    assert "html" not in error.message


STREAM_EVENTS: list[tuple[str, type[ProviderError], int, str]] = [
    ("overloaded_error", RetryableProviderError, 503, "overloaded"),
    ("api_error", RetryableProviderError, 502, "upstream_error"),
    ("timeout_error", RetryableProviderError, 504, "timeout"),
    ("rate_limit_error", RetryableProviderError, 429, "rate_limit_exceeded"),
    ("invalid_request_error", FinalProviderError, 400, "invalid_value"),
    ("authentication_error", FinalProviderError, 502, "upstream_auth_error"),
    ("billing_error", FinalProviderError, 503, "insufficient_quota"),
    ("a_type_added_later", RetryableProviderError, 502, "upstream_error"),
]


@pytest.mark.parametrize(("err_type", "cls", "gw_status", "code"), STREAM_EVENTS)
def test_in_stream_error_events(
    err_type: str, cls: type[ProviderError], gw_status: int, code: str
) -> None:
    payload: dict[str, Any] = {"type": "error", "error": {"type": err_type, "message": "Boom"}}
    error = error_from_payload(payload, "anthropic")
    assert type(error) is cls
    assert (error.http_status, error.code) == (gw_status, code)
    assert error.upstream_status is None  # the HTTP status was 200
    validate_openai("ErrorResponse", error.to_dict())
