"""Anthropic stream -> OpenAI chunks, from recorded Anthropic streams.

Each fixture goes through the worker's real SSE reader and the parser; every chunk is
wrapped as job.py wraps it and checked by OpenAI's SDK model and spec, then the whole
stream is accumulated by the OpenAI SDK's own stream state, as a client would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from anthropic.types import RawMessageStreamEvent
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from services.worker.providers import REGISTRY
from services.worker.providers.anthropic import AnthropicAdapter, AnthropicStreamParser
from services.worker.providers.base import SseEvent, StreamDelta
from services.worker.sse import iter_sse
from shared.errors import FinalProviderError, RetryableProviderError
from shared.messages import Usage
from tests.oracles import validate_openai

FIXTURES = Path(__file__).parents[2] / "fixtures" / "anthropic"
EVENT = TypeAdapter[Any](RawMessageStreamEvent)


async def _pieces(raw: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(raw), size):  # awkward cuts, as a network delivers them
        yield raw[start : start + size]


async def events_of(name: str) -> list[SseEvent]:
    raw = (FIXTURES / f"stream_{name}.sse").read_bytes()
    events = [event async for event in iter_sse(_pieces(raw, 37))]
    for event in events:
        payload = orjson.loads(event.data)
        assert payload["type"] == event.event
        if event.event not in ("ping", "error"):  # not in the SDK's event union
            EVENT.validate_python(payload)  # the fixture is what the Anthropic SDK parses
    return events


def feed_all(events: list[SseEvent]) -> tuple[AnthropicStreamParser, list[StreamDelta]]:
    parser = AnthropicAdapter().stream_parser()
    deltas = [delta for event in events for delta in parser.feed(event)]
    return parser, deltas


def client_chunks(deltas: list[StreamDelta]) -> list[dict[str, Any]]:
    """The chunks job.py publishes, each validated by OpenAI's SDK model and spec."""
    chunks = []
    for delta in deltas:
        if not delta.choices:
            continue
        chunk = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "claude-3-5-sonnet",
            "choices": delta.choices,
            "usage": None,
        }
        encoded = orjson.loads(orjson.dumps(chunk))  # what goes over the wire
        ChatCompletionChunk.model_validate(encoded)
        validate_openai("CreateChatCompletionStreamResponse", encoded)
        chunks.append(encoded)
    return chunks


def check_invariants(chunks: list[dict[str, Any]]) -> None:
    """Role first; each tool index first seen with id, type and name; one finish, last."""
    assert chunks, "no chunks"
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    seen: set[int] = set()
    for chunk in chunks:
        for call in chunk["choices"][0]["delta"].get("tool_calls") or ():
            if call["index"] not in seen:
                assert call["index"] == len(seen), "tool indexes count tool calls only"
                assert call["id"] and call["type"] == "function" and call["function"]["name"]
                seen.add(call["index"])
            else:
                assert "id" not in call and "name" not in call["function"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    assert [f for f in finishes if f is not None] == [finishes[-1]], "finish_reason once, last"


def accumulate(chunks: list[dict[str, Any]]) -> ChatCompletion:
    """The completion the OpenAI SDK's stream helper builds from the chunks."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    # The snapshot, not get_final_completion(): that one raises on length/content_filter.
    return ChatCompletion.model_validate(state.current_completion_snapshot.model_dump())


async def translate(name: str) -> tuple[AnthropicStreamParser, list[StreamDelta], ChatCompletion]:
    parser, deltas = feed_all(await events_of(name))
    chunks = client_chunks(deltas)
    check_invariants(chunks)
    return parser, deltas, accumulate(chunks)


def final_usage(deltas: list[StreamDelta]) -> Usage | None:
    usages = [d.usage for d in deltas if d.usage is not None]
    return usages[-1] if usages else None


def test_registered_under_the_catalog_adapter_name() -> None:
    assert isinstance(REGISTRY["anthropic"], AnthropicAdapter)


class TestStream:
    async def test_text(self) -> None:
        parser, deltas, final = await translate("text")
        assert parser.finished and parser.saw_finish_reason
        assert final.choices[0].message.content == "Hello, world!"
        assert final.choices[0].finish_reason == "stop"
        assert final_usage(deltas) == Usage(prompt_tokens=472, completion_tokens=15)

    async def test_text_then_tool_call(self) -> None:
        _, deltas, final = await translate("tool_use")
        message = final.choices[0].message
        assert message.content == "Checking."
        assert message.tool_calls is not None and len(message.tool_calls) == 1
        call = message.tool_calls[0]
        assert call.id == "toolu_01T1x1"
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert orjson.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
        assert final.choices[0].finish_reason == "tool_calls"
        assert final_usage(deltas) == Usage(prompt_tokens=472, completion_tokens=54)

    async def test_parallel_tool_calls_and_cache_usage(self) -> None:
        _, deltas, final = await translate("parallel_tool_use")
        calls = final.choices[0].message.tool_calls or []
        assert [(c.id, orjson.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
            ("toolu_01Paris", {"city": "Paris"}),
            ("toolu_02Rome", {"city": "Rome"}),
        ]
        assert final_usage(deltas) == Usage(
            prompt_tokens=300 + 100 + 20, completion_tokens=80, cached_tokens=100
        )

    async def test_interleaved_thinking_text_and_tools(self) -> None:
        _, deltas, final = await translate("interleaved")
        message = final.choices[0].message
        assert message.content == "First Paris.Then the time."
        calls = message.tool_calls or []
        # Anthropic block indexes 2 and 4 are OpenAI tool indexes 0 and 1.
        assert [(c.id, c.function.name) for c in calls] == [  # type: ignore[union-attr]
            ("toolu_01Paris", "get_weather"),
            ("toolu_02Time", "get_time"),
        ]
        assert calls[1].function.arguments == "{}"  # type: ignore[union-attr]
        wire = orjson.dumps([d.choices for d in deltas])
        assert b"SECRET" not in wire and b"EqQB" not in wire  # thinking never leaks
        usage = final_usage(deltas)
        assert usage is not None and usage.reasoning_tokens == 40

    async def test_max_tokens(self) -> None:
        _, _, final = await translate("max_tokens")
        assert final.choices[0].finish_reason == "length"
        assert final.choices[0].message.content == "Once upon a time"

    async def test_refusal(self) -> None:
        _, _, final = await translate("refusal")
        assert final.choices[0].finish_reason == "content_filter"

    async def test_json_mode_streams_content_and_stops(self) -> None:
        _, deltas, final = await translate("json_mode")
        assert orjson.loads(final.choices[0].message.content or "") == {"name": "Ada", "age": 36}
        assert not final.choices[0].message.tool_calls
        assert final.choices[0].finish_reason == "stop"
        assert not any(d.choices[0]["delta"].get("tool_calls") for d in deltas)

    async def test_error_event_after_content_raises_retryable(self) -> None:
        events = await events_of("error")
        parser = AnthropicAdapter().stream_parser()
        delivered: list[StreamDelta] = []
        with pytest.raises(RetryableProviderError) as caught:
            for event in events:
                delivered.extend(parser.feed(event))
        assert caught.value.code == "overloaded"
        assert caught.value.message == "Overloaded"
        text = "".join(d.choices[0]["delta"].get("content") or "" for d in delivered)
        assert text == "Hello"
        assert not parser.finished and not parser.saw_finish_reason

    async def test_a_stream_cut_before_its_end_is_not_finished(self) -> None:
        events = await events_of("text")
        parser, _ = feed_all(events[:-2])  # no message_delta, no message_stop
        assert not parser.finished and not parser.saw_finish_reason


class TestStreamEdges:
    def test_ping_and_unknown_events_yield_nothing(self) -> None:
        parser = AnthropicAdapter().stream_parser()
        assert parser.feed(SseEvent("ping", b'{"type": "ping"}')) == []
        assert parser.feed(SseEvent("brand_new", b'{"type": "brand_new"}')) == []
        assert parser.feed(SseEvent("", b"")) == []

    def test_invalid_request_error_event_is_final(self) -> None:
        parser = AnthropicAdapter().stream_parser()
        with pytest.raises(FinalProviderError):
            parser.feed(
                SseEvent(
                    "error",
                    b'{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}',
                )
            )

    def test_malformed_event_is_retryable(self) -> None:
        parser = AnthropicAdapter().stream_parser()
        with pytest.raises(RetryableProviderError) as caught:
            parser.feed(SseEvent("content_block_delta", b'{"type": "content_block_de'))
        assert caught.value.code == "bad_response"

    def test_message_stop_without_message_delta_still_finishes_once(self) -> None:
        parser = AnthropicAdapter().stream_parser()
        start = {"type": "message_start", "message": {"usage": {"input_tokens": 5}}}
        deltas = parser.feed(SseEvent("message_start", orjson.dumps(start)))
        deltas += parser.feed(SseEvent("message_stop", b'{"type": "message_stop"}'))
        chunks = client_chunks(deltas)
        check_invariants(chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert parser.finished
