"""Anthropic Message -> OpenAI completion, from recorded Anthropic responses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion

from services.worker.providers.anthropic.response import (
    finish_reason,
    parse_response,
    usage_from_anthropic,
)
from services.worker.providers.base import Completion
from shared.errors import RetryableProviderError
from shared.messages import Usage
from tests.oracles import validate_openai

FIXTURES = Path(__file__).parents[2] / "fixtures" / "anthropic"


def recorded(name: str) -> bytes:
    raw = (FIXTURES / f"message_{name}.json").read_bytes()
    Message.model_validate_json(raw)  # the fixture is a message the Anthropic SDK accepts
    return raw


def completion_body(completion: Completion) -> dict[str, Any]:
    """The body job.py sends the client, validated by OpenAI's SDK and spec."""
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "claude-sonnet-4-5",
        "choices": completion.choices,
        "usage": (completion.usage or Usage()).to_openai(),
        **completion.extra,
    }
    ChatCompletion.model_validate(body)
    validate_openai("CreateChatCompletionResponse", body)
    return body


def parse(name: str) -> tuple[dict[str, Any], Completion]:
    completion = parse_response(recorded(name), "anthropic")
    body = completion_body(completion)
    assert len(body["choices"]) == 1
    return body["choices"][0], completion


class TestParseResponse:
    def test_text_blocks_are_concatenated(self) -> None:
        choice, completion = parse("text")
        assert choice["message"] == {
            "role": "assistant",
            "content": "Hello! How can I help?",
            "refusal": None,
        }
        assert choice["finish_reason"] == "stop"
        assert completion.usage == Usage(prompt_tokens=25, completion_tokens=12)

    def test_tool_use_with_thinking_and_cache_usage(self) -> None:
        choice, completion = parse("tool_use")
        message = choice["message"]
        assert message["content"] == "Let me check."  # the thinking block is not content
        assert message["tool_calls"] == [
            {
                "id": "toolu_01A09q90qw90lq917835lq9",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris","days":2}'},
            }
        ]
        assert choice["finish_reason"] == "tool_calls"
        assert completion.usage == Usage(
            prompt_tokens=412 + 2048 + 100,  # input excludes cache reads and writes
            completion_tokens=61,
            cached_tokens=2048,
            reasoning_tokens=20,
        )

    def test_parallel_tool_use(self) -> None:
        choice, _ = parse("parallel_tool_use")
        assert choice["message"]["content"] is None
        calls = choice["message"]["tool_calls"]
        assert [c["id"] for c in calls] == ["toolu_01Paris", "toolu_02Rome"]
        assert [orjson.loads(c["function"]["arguments"]) for c in calls] == [
            {"city": "Paris"},
            {"city": "Rome"},
        ]
        assert choice["finish_reason"] == "tool_calls"

    def test_max_tokens_is_length_and_null_cache_counters_count_zero(self) -> None:
        choice, completion = parse("max_tokens")
        assert choice["finish_reason"] == "length"
        assert completion.usage == Usage(prompt_tokens=10, completion_tokens=5)

    def test_stop_sequence_is_stop(self) -> None:
        choice, _ = parse("stop_sequence")
        assert (choice["message"]["content"], choice["finish_reason"]) == ("1, 2, 3", "stop")

    def test_refusal_is_content_filter(self) -> None:
        choice, _ = parse("refusal")
        assert choice["finish_reason"] == "content_filter"
        assert choice["message"]["content"] == "I can't help with that."

    def test_json_mode_tool_becomes_content_and_stop(self) -> None:
        choice, _ = parse("json_mode")
        assert orjson.loads(choice["message"]["content"]) == {"name": "Ada", "age": 36}
        assert "tool_calls" not in choice["message"]
        assert choice["finish_reason"] == "stop"

    def test_an_error_envelope_with_status_200_raises(self) -> None:
        body = orjson.dumps(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        )
        with pytest.raises(RetryableProviderError) as caught:
            parse_response(body, "anthropic")
        assert caught.value.code == "overloaded"

    @pytest.mark.parametrize("body", [b"<html>", b"[]", b'{"type": "message"}'])
    def test_malformed_bodies_are_retryable(self, body: bytes) -> None:
        with pytest.raises(RetryableProviderError) as caught:
            parse_response(body, "anthropic")
        assert caught.value.code == "bad_response"


@pytest.mark.parametrize(
    ("stop_reason", "has_tool_calls", "expected"),
    [
        ("end_turn", False, "stop"),
        ("stop_sequence", False, "stop"),
        ("pause_turn", False, "stop"),
        ("max_tokens", False, "length"),
        ("model_context_window_exceeded", False, "length"),
        ("tool_use", True, "tool_calls"),
        ("tool_use", False, "stop"),  # the JSON-mode tool
        ("refusal", False, "content_filter"),
        ("something_new", False, "stop"),
        (None, False, "stop"),
    ],
)
def test_finish_reason_table(stop_reason: str | None, has_tool_calls: bool, expected: str) -> None:
    assert finish_reason(stop_reason, has_tool_calls=has_tool_calls) == expected


def test_usage_without_counters_is_none() -> None:
    assert usage_from_anthropic(None) is None
    assert usage_from_anthropic({"input_tokens": 3, "output_tokens": 4}) == Usage(3, 4)
