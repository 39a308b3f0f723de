from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any, ClassVar

import orjson
import pytest
from multidict import CIMultiDict
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from services.worker.providers import REGISTRY
from services.worker.providers.base import ChatRequest, SseEvent, Target
from services.worker.providers.openai_compat import (
    OpenAICompatible,
    OpenAIStreamParser,
    parse_retry_after,
)
from shared.catalog import Offer, ProviderConfig
from shared.errors import FinalProviderError, RetryableProviderError
from shared.messages import Usage
from shared.money import Price
from tests.oracles import validate_openai, validate_openai_request

ADAPTER = OpenAICompatible("openai")


def target(
    *, api_key: str = "sk-test-123", drop: frozenset[str] = frozenset(), name: str = "openai"
) -> Target:
    return Target(
        model_id="gpt-4o-mini",
        provider=ProviderConfig(
            name=name, adapter="openai", base_url="https://up.example/v1", drop_params=drop
        ),
        offer=Offer(
            provider=name,
            upstream_model="gpt-4o-mini-2024-07-18",
            price=Price(Decimal("0.15"), Decimal("0.60")),
        ),
        api_key=api_key,
        base_url="https://up.example/v1",
    )


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]

CLIENT_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a1", "content": "18C, cloudy"},
    ],
    "tools": TOOLS,
    "tool_choice": "auto",
    "temperature": 0.2,
    "max_completion_tokens": 100,
    "logit_bias": {"50256": -100},
    "user": "u-1",
    "provider": "openai",  # gateway routing fields: never sent upstream
    "models": ["a", "b"],
    "route": "fallback",
}


def request(stream: bool, include_usage: bool = False, **extra: Any) -> ChatRequest:
    body = {**CLIENT_BODY, **extra}
    if stream:
        body["stream"] = True
    return ChatRequest(body=body, stream=stream, include_usage=include_usage)


class TestBuildRequest:
    def test_non_streaming_body_is_the_client_body_for_the_upstream_model(self) -> None:
        call = ADAPTER.build_request(request(stream=False), target())
        body = orjson.loads(call.body)
        assert call.method == "POST"
        assert call.url == "https://up.example/v1/chat/completions"
        assert call.headers == {
            "Content-Type": "application/json",
            "Authorization": "Bearer sk-test-123",
        }
        assert body["model"] == "gpt-4o-mini-2024-07-18"
        assert not {"provider", "models", "route", "stream_options"} & set(body)
        assert body["messages"] == CLIENT_BODY["messages"]
        assert body["tools"] == TOOLS
        validate_openai_request(body, stream=False)
        validate_openai("CreateChatCompletionRequest", body)

    def test_streaming_always_asks_for_usage(self) -> None:
        call = ADAPTER.build_request(request(stream=True), target())
        body = orjson.loads(call.body)
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        validate_openai_request(body, stream=True)
        validate_openai("CreateChatCompletionRequest", body)

    def test_streaming_keeps_other_stream_options(self) -> None:
        req = request(
            stream=True,
            stream_options={"include_usage": False, "include_obfuscation": False},
        )
        body = orjson.loads(ADAPTER.build_request(req, target()).body)
        assert body["stream_options"] == {"include_usage": True, "include_obfuscation": False}
        validate_openai_request(body, stream=True)

    def test_non_streaming_drops_stray_stream_options(self) -> None:
        req = request(stream=False, stream_options={"include_usage": True})
        body = orjson.loads(ADAPTER.build_request(req, target()).body)
        assert "stream_options" not in body

    def test_drop_params_of_provider_and_adapter(self) -> None:
        adapter = OpenAICompatible("x", drop_params=frozenset({"logit_bias"}))
        call = adapter.build_request(request(stream=False), target(drop=frozenset({"user"})))
        body = orjson.loads(call.body)
        assert "logit_bias" not in body and "user" not in body
        assert body["temperature"] == 0.2

    def test_no_authorization_without_a_key(self) -> None:
        call = ADAPTER.build_request(request(stream=False), target(api_key=""))
        assert "Authorization" not in call.headers

    def test_client_body_is_not_mutated(self) -> None:
        req = request(stream=True)
        before = orjson.dumps(dict(req.body))
        ADAPTER.build_request(req, target())
        assert orjson.dumps(dict(req.body)) == before

    def test_together_wraps_stop_and_drops_unsupported_fields(self) -> None:
        together = REGISTRY["together"]
        req = request(stream=False, stop="END", store=True, logprobs=True, top_logprobs=2)
        body = orjson.loads(together.build_request(req, target(name="together")).body)
        assert body["stop"] == ["END"]
        assert not {"store", "logprobs", "top_logprobs", "user"} & set(body)
        validate_openai_request(body, stream=False)


class TestParseResponse:
    TOOL_RESPONSE: ClassVar[dict[str, Any]] = {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "annotations": [],
                    "tool_calls": [
                        {
                            "id": "call_a1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 1117,
            "completion_tokens": 46,
            "total_tokens": 1163,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 7, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035",
    }

    @staticmethod
    def gateway_body(completion: Any) -> dict[str, Any]:
        """What the worker builds from a Completion; must satisfy OpenAI clients."""
        return {
            "id": "chatcmpl-gw",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o",
            "choices": completion.choices,
            "usage": completion.usage.to_openai(),
            **completion.extra,
        }

    def test_tool_call_response(self) -> None:
        completion = ADAPTER.parse_response(orjson.dumps(self.TOOL_RESPONSE))
        assert completion.choices == self.TOOL_RESPONSE["choices"]
        assert completion.usage == Usage(
            prompt_tokens=1117, completion_tokens=46, cached_tokens=1024, reasoning_tokens=7
        )
        assert completion.extra == {
            "system_fingerprint": "fp_fc9f1d7035",
            "service_tier": "default",
        }
        body = self.gateway_body(completion)
        ChatCompletion.model_validate(body)
        validate_openai("CreateChatCompletionResponse", body)

    def test_together_response_is_normalised(self) -> None:
        raw = {
            "id": "x",
            "object": "chat.completion",
            "created": 1,
            "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "prompt": [],
            "choices": [
                {
                    "index": 0,
                    "text": "Hi",
                    "seed": 42,
                    "logprobs": {"tokens": ["Hi"], "token_logprobs": [-0.1]},
                    "finish_reason": "eos",
                    "message": {"role": "assistant", "content": "Hi", "reasoning": "..."},
                },
                {"index": 1, "finish_reason": "something_new", "message": {"content": "Yo"}},
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
        completion = ADAPTER.parse_response(orjson.dumps(raw))
        assert [c["finish_reason"] for c in completion.choices] == ["stop", "stop"]
        first = completion.choices[0]
        assert first["logprobs"] is None
        assert first["message"] == {
            "role": "assistant",
            "content": "Hi",
            "reasoning": "...",
            "refusal": None,
        }
        assert set(first) == {"index", "message", "logprobs", "finish_reason"}
        assert completion.extra == {}
        body = self.gateway_body(completion)
        ChatCompletion.model_validate(body)
        validate_openai("CreateChatCompletionResponse", body)

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("stop", "stop"),
            ("length", "length"),
            ("tool_calls", "tool_calls"),
            ("content_filter", "content_filter"),
            ("function_call", "function_call"),
            ("eos", "stop"),
            ("weird", "stop"),
            (None, "stop"),
        ],
    )
    def test_finish_reason_enum(self, raw: str | None, expected: str) -> None:
        body = {"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": raw}]}
        completion = ADAPTER.parse_response(orjson.dumps(body))
        assert completion.choices[0]["finish_reason"] == expected
        assert completion.usage is None

    @pytest.mark.parametrize(
        "body", [b"<html>oops</html>", b"", b"[1, 2]", b'{"choices": []}', b'{"error": "boom"}']
    )
    def test_bad_bodies_are_retryable(self, body: bytes) -> None:
        with pytest.raises(RetryableProviderError):
            ADAPTER.parse_response(body)


def sse(obj: Any, event: str = "") -> SseEvent:
    return SseEvent(event, obj if isinstance(obj, bytes) else orjson.dumps(obj))


def chunk(choices: list[dict[str, Any]], usage: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1736900000,
        "model": "gpt-4o",
        "choices": choices,
        "usage": usage,
        **extra,
    }


def choice(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


USAGE = {"prompt_tokens": 80, "completion_tokens": 17, "total_tokens": 97}


class TestStreamParser:
    def test_openai_text_stream_with_usage(self) -> None:
        parser = ADAPTER.stream_parser()
        events = [
            chunk([choice({"role": "assistant", "content": ""})]),
            chunk([choice({"content": "Hello"})]),
            chunk([choice({}, "stop")]),
            chunk([], usage=USAGE),
        ]
        deltas = [d for e in events for d in parser.feed(sse(e))]
        assert not parser.finished
        assert [d.choices for d in deltas[:3]] == [e["choices"] for e in events[:3]]
        assert deltas[3].choices == [] and deltas[3].usage == Usage(80, 17)
        assert parser.feed(sse(b"[DONE]")) == []
        assert parser.finished
        for d in deltas:
            # The worker re-wraps deltas into its own chunk: it must satisfy OpenAI clients.
            out = chunk(d.choices, usage=d.usage.to_openai() if d.usage else None)
            ChatCompletionChunk.model_validate(out)
            validate_openai("CreateChatCompletionStreamResponse", out)

    def test_together_final_chunk_is_normalised(self) -> None:
        parser = ADAPTER.stream_parser()
        raw = chunk(
            [
                {
                    "index": 0,
                    "text": "",
                    "logprobs": -0.5,
                    "delta": {"content": "", "token_id": 2},
                    "finish_reason": "eos",
                }
            ],
            usage=USAGE,
        )
        [delta] = parser.feed(sse(raw))
        assert delta.choices[0]["finish_reason"] == "stop"
        assert delta.choices[0]["logprobs"] is None
        assert delta.usage == Usage(80, 17)
        assert isinstance(parser, OpenAIStreamParser) and parser.saw_finish_reason
        ChatCompletionChunk.model_validate(chunk(delta.choices))
        validate_openai("CreateChatCompletionStreamResponse", chunk(delta.choices))

    def test_saw_finish_reason_waits_for_every_choice(self) -> None:
        parser = OpenAIStreamParser("p")
        parser.feed(
            sse(chunk([choice({"content": "a"}, index=0), choice({"content": "b"}, index=1)]))
        )
        parser.feed(sse(chunk([choice({}, "stop", index=0)])))
        assert not parser.saw_finish_reason
        parser.feed(sse(chunk([choice({}, "length", index=1)])))
        assert parser.saw_finish_reason and not parser.finished

    def test_keepalives_and_empty_chunks_give_nothing(self) -> None:
        parser = ADAPTER.stream_parser()
        assert parser.feed(SseEvent("", b"")) == []
        assert parser.feed(sse(chunk([]))) == []

    def test_error_event_is_retryable(self) -> None:
        parser = ADAPTER.stream_parser()
        err = {
            "error": {
                "message": "overloaded",
                "type": "server_error",
                "param": None,
                "code": "boom",
            }
        }
        with pytest.raises(RetryableProviderError) as info:
            parser.feed(sse(err))
        assert info.value.message == "overloaded" and info.value.code == "boom"

    def test_named_error_event_is_retryable(self) -> None:
        with pytest.raises(RetryableProviderError):
            ADAPTER.stream_parser().feed(sse({"message": "x"}, event="error"))

    @pytest.mark.parametrize("data", [b"{not json", b'"a string"', b'{"choices": [1]}'])
    def test_malformed_chunks_are_retryable(self, data: bytes) -> None:
        with pytest.raises(RetryableProviderError) as info:
            ADAPTER.stream_parser().feed(SseEvent("", data))
        assert info.value.code == "bad_response"


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


class TestClassifyError:
    def classify(self, status: int, body: bytes = b"", **headers: str) -> Any:
        hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
        return ADAPTER.classify_error(status, hdrs, body, "openai")

    def test_400_keeps_the_upstream_error(self) -> None:
        body = error_body(
            "maximum context length is 128000 tokens",
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
        )
        err = self.classify(400, body)
        assert isinstance(err, FinalProviderError)
        assert (err.http_status, err.error_type, err.code, err.param) == (
            400,
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
        )
        assert err.message == "maximum context length is 128000 tokens"
        assert (err.provider, err.upstream_status) == ("openai", 400)
        validate_openai("ErrorResponse", err.to_dict())

    def test_404_is_model_not_found(self) -> None:
        err = self.classify(
            404, error_body("The model `x` does not exist", "invalid_request_error", None)
        )
        assert isinstance(err, FinalProviderError)
        assert (err.http_status, err.code) == (404, "model_not_found")

    @pytest.mark.parametrize("status", [413, 422])
    def test_other_client_errors_are_final(self, status: int) -> None:
        err = self.classify(status, b"not json")
        assert isinstance(err, FinalProviderError) and err.http_status == status

    @pytest.mark.parametrize("status", [401, 403])
    def test_auth_errors_do_not_leak_the_key(self, status: int) -> None:
        body = error_body(
            "Incorrect API key provided: sk-live-abcdef****wxyz.",
            "invalid_request_error",
            "invalid_api_key",
        )
        err = self.classify(status, body)
        assert isinstance(err, FinalProviderError)
        assert (err.http_status, err.code, err.upstream_status) == (
            502,
            "upstream_auth_error",
            status,
        )
        assert "sk-" not in err.message and "sk-" not in err.to_body().decode()

    def test_429_rate_limit_is_retryable_with_hint(self) -> None:
        body = error_body("Rate limit reached for gpt-4o", "requests", "rate_limit_exceeded")
        err = self.classify(429, body, retry_after="2")
        assert isinstance(err, RetryableProviderError)
        assert (err.http_status, err.code, err.retry_after_s) == (429, "rate_limit_exceeded", 2.0)
        assert err.headers == {"retry-after": "2"}
        assert (err.provider, err.upstream_status) == ("openai", 429)

    def test_429_insufficient_quota_is_final_503(self) -> None:
        body = error_body(
            "You exceeded your current quota", "insufficient_quota", "insufficient_quota"
        )
        err = self.classify(429, body)
        assert isinstance(err, FinalProviderError)
        assert (err.http_status, err.error_type, err.code) == (
            503,
            "insufficient_quota",
            "insufficient_quota",
        )
        assert err.upstream_status == 429

    @pytest.mark.parametrize(
        ("status", "gateway_status"),
        [
            (408, 504),
            (409, 502),
            (500, 502),
            (502, 502),
            (503, 503),
            (504, 504),
            (520, 502),
            (521, 502),
            (522, 502),
            (523, 502),
            (524, 504),
            (529, 503),
            (599, 502),
        ],
    )
    def test_technical_statuses_are_retryable(self, status: int, gateway_status: int) -> None:
        err = self.classify(status, b"<html><body>Bad gateway</body></html>")
        assert isinstance(err, RetryableProviderError)
        assert err.http_status == gateway_status and err.upstream_status == status
        assert err.retry_after_s is None

    def test_503_keeps_upstream_code(self) -> None:
        err = self.classify(503, error_body("slow down", "server_error", "slow_down"))
        assert isinstance(err, RetryableProviderError) and err.code == "slow_down"
        assert err.message == "slow down"

    def test_x_should_retry_is_obeyed(self) -> None:
        assert isinstance(self.classify(400, b"", x_should_retry="true"), RetryableProviderError)
        err = self.classify(500, b"", x_should_retry="false")
        assert isinstance(err, FinalProviderError) and err.http_status == 502

    def test_headers_are_case_insensitive(self) -> None:
        err = ADAPTER.classify_error(429, CIMultiDict({"Retry-After-Ms": "1500"}), b"", "p")
        assert err.retry_after_s == 1.5
        err = ADAPTER.classify_error(429, {"Retry-After": "3"}, b"", "p")
        assert err.retry_after_s == 3.0


class TestRetryAfter:
    def test_ms_wins_over_seconds(self) -> None:
        assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25

    def test_seconds_float_and_cap(self) -> None:
        assert parse_retry_after({"retry-after": "1.5"}) == 1.5
        assert parse_retry_after({"retry-after": "3600"}) == 120.0
        assert parse_retry_after({"retry-after": "-4"}) == 0.0

    def test_http_date(self) -> None:
        now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
        later = format_datetime(now + timedelta(seconds=30), usegmt=True)
        assert parse_retry_after({"retry-after": later}, now_s=now.timestamp()) == 30.0
        earlier = format_datetime(now - timedelta(seconds=30), usegmt=True)
        assert parse_retry_after({"retry-after": earlier}, now_s=now.timestamp()) == 0.0

    @pytest.mark.parametrize("value", ["soon", "", "nan"])
    def test_unreadable_is_none(self, value: str) -> None:
        assert parse_retry_after({"retry-after": value}) is None

    def test_absent_is_none(self) -> None:
        assert parse_retry_after({}) is None


def test_registry() -> None:
    assert set(REGISTRY) >= {"openai", "together", "openai_compat"}
    assert isinstance(REGISTRY["openai_compat"], OpenAICompatible)
