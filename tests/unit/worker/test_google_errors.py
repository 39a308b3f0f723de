"""Gemini HTTP errors -> the gateway's error tree (wire-formats doc §3.6, §6.1)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.worker.providers import REGISTRY
from services.worker.providers.google.errors import parse_duration_s
from shared.errors import FinalProviderError, ProviderError, RetryableProviderError
from tests.oracles import validate_openai

ADAPTER = REGISTRY["google"]
KEY = "AIzaSy-not-a-real-key-0123456789"


def envelope(code: int, status: str, message: str, *details: dict[str, Any]) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return orjson.dumps({"error": error})


def retry_info(delay: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


def quota_failure(quota_id: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
            {
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": quota_id,
                "quotaValue": "15",
            }
        ],
    }


def classify(status: int, body: bytes) -> ProviderError:
    error = ADAPTER.classify_error(status, {}, body, "google")
    validate_openai("ErrorResponse", error.to_dict())
    assert error.provider == "google" and error.upstream_status == status
    return error


class TestRateLimits:
    @pytest.mark.parametrize(("delay", "seconds"), [("2s", 2.0), ("1.5s", 1.5), ("38.9s", 38.9)])
    def test_per_minute_429_is_retryable_with_the_delay(self, delay: str, seconds: float) -> None:
        error = classify(
            429,
            envelope(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota.",
                quota_failure("GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
                retry_info(delay),
            ),
        )
        assert isinstance(error, RetryableProviderError)
        assert error.http_status == 429 and error.code == "rate_limit_exceeded"
        assert error.retry_after_s == pytest.approx(seconds)
        assert error.headers["retry-after"] == str(int(-(-seconds // 1)))

    def test_delay_from_the_message_when_details_are_missing(self) -> None:
        error = classify(
            429, envelope(429, "RESOURCE_EXHAUSTED", "Quota hit. Please retry in 7.2s.")
        )
        assert isinstance(error, RetryableProviderError) and error.retry_after_s == pytest.approx(
            7.2
        )

    @pytest.mark.parametrize(
        "details",
        [
            (quota_failure("GenerateRequestsPerDayPerProjectPerModel-FreeTier"), retry_info("20s")),
            (retry_info("3600s"),),
        ],
    )
    def test_daily_quota_or_a_long_wait_is_final(self, details: tuple[dict[str, Any], ...]) -> None:
        error = classify(
            429, envelope(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota.", *details)
        )
        assert isinstance(error, FinalProviderError)
        assert error.http_status == 503 and error.code == "insufficient_quota"


class TestStatuses:
    @pytest.mark.parametrize(
        ("status", "rpc", "gateway_status", "code"),
        [
            (500, "INTERNAL", 502, "upstream_error"),
            (503, "UNAVAILABLE", 503, "overloaded"),
            (504, "DEADLINE_EXCEEDED", 504, "timeout"),
        ],
    )
    def test_server_errors_are_retryable(
        self, status: int, rpc: str, gateway_status: int, code: str
    ) -> None:
        error = classify(status, envelope(status, rpc, "try again"))
        assert isinstance(error, RetryableProviderError)
        assert (error.http_status, error.code) == (gateway_status, code)

    def test_a_proxy_page_is_classified_by_status(self) -> None:
        assert isinstance(classify(502, b"<html>Bad gateway</html>"), RetryableProviderError)
        assert isinstance(classify(400, b""), FinalProviderError)

    @pytest.mark.parametrize("rpc", ["INVALID_ARGUMENT", "FAILED_PRECONDITION"])
    def test_bad_requests_are_final_400s(self, rpc: str) -> None:
        message = "* GenerateContentRequest.contents: contents is not specified"
        error = classify(400, envelope(400, rpc, message))
        assert isinstance(error, FinalProviderError)
        assert (error.http_status, error.code, error.message) == (400, "invalid_value", message)

    def test_context_too_long(self) -> None:
        error = classify(
            400,
            envelope(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1234567) exceeds the maximum number of tokens allowed (1048576).",
            ),
        )
        assert isinstance(error, FinalProviderError)
        assert (error.http_status, error.code) == (400, "context_length_exceeded")

    @pytest.mark.parametrize(
        ("status", "body"),
        [
            (
                400,
                envelope(
                    400,
                    "INVALID_ARGUMENT",
                    f"API key not valid. Please pass a valid API key. ({KEY})",
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                    },
                ),
            ),
            (401, envelope(401, "UNAUTHENTICATED", f"key {KEY} rejected")),
            (403, envelope(403, "PERMISSION_DENIED", f"Permission denied for {KEY}")),
        ],
    )
    def test_credential_problems_are_the_gateways_and_never_leak_the_key(
        self, status: int, body: bytes
    ) -> None:
        error = classify(status, body)
        assert isinstance(error, FinalProviderError)
        assert (error.http_status, error.code) == (502, "upstream_auth_error")
        assert KEY not in error.to_body().decode()

    def test_unknown_model(self) -> None:
        error = classify(
            404, envelope(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta")
        )
        assert isinstance(error, FinalProviderError)
        assert (error.http_status, error.code) == (404, "model_not_found")

    def test_array_wrapped_envelope(self) -> None:
        body = b"[" + envelope(400, "INVALID_ARGUMENT", 'Unknown name "foo"') + b"]"
        error = classify(400, body)
        assert error.message == 'Unknown name "foo"'


def test_durations() -> None:
    assert parse_duration_s("45.837906927s") == pytest.approx(45.837906927)
    assert parse_duration_s("10") is None
    assert parse_duration_s(None) is None
