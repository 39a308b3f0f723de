"""Gemini SSE streams -> OpenAI chunks, from recorded fixtures (wire-formats doc §3.5).

Streams go through the real SSE reader, CRLF framing and all; every resulting chunk is
wrapped exactly as job.py wraps it and checked with `ChatCompletionChunk` and the spec.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletionChunk

from services.worker.providers import REGISTRY
from services.worker.providers.base import StreamDelta
from services.worker.providers.google.ids import decode_call_id
from services.worker.providers.google.request import translate_body
from services.worker.sse import iter_sse
from shared.errors import FinalProviderError, ProviderError, RetryableProviderError
from shared.messages import Usage
from tests.oracles import validate_openai
from tests.oracles_gemini import validate_gemini_request, validate_gemini_response

ADAPTER = REGISTRY["google"]
SIGNATURE = "CiQB4/H/Xt5t+Q=="


def usage(prompt: int, candidates: int, thoughts: int = 0) -> dict[str, int]:
    meta = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
    }
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    return meta


def text_chunk(text: str, *, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
    if finish:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "modelVersion": "gemini-2.5-flash",
        "responseId": "AdVR",
        **extra,
    }


TEXT_STREAM: list[dict[str, Any]] = [
    {**text_chunk("Here you go: "), "usageMetadata": usage(5, 4, 186)},
    {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"text": "thinking out loud", "thought": True}, {"text": "Paris."}],
                }
            }
        ],
        "usageMetadata": usage(5, 6, 186),
    },
    {**text_chunk("", finish="STOP"), "usageMetadata": usage(5, 7, 186)},
]
# The doc's example: text, then a complete call with its signature and the finish reason.
CALL_STREAM: list[dict[str, Any]] = [
    {**text_chunk("Here you go: "), "usageMetadata": usage(5, 4, 186)},
    {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {
                            "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                            "thoughtSignature": SIGNATURE,
                        }
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": usage(5, 19, 186),
    },
]
# Parallel calls over two events, the finish reason arriving on its own afterwards.
PARALLEL_STREAM: list[dict[str, Any]] = [
    {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                        {"functionCall": {"name": "get_time", "args": {}}},
                    ],
                }
            }
        ],
        "usageMetadata": usage(9, 10),
    },
    {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {
                            "functionCall": {
                                "id": "fc_3",
                                "name": "get_weather",
                                "args": {"city": "Rome", "days": 2},
                            }
                        }
                    ],
                }
            }
        ],
        "usageMetadata": usage(9, 15),
    },
    {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP"}
        ],
        "usageMetadata": usage(9, 15),
    },
]
MAX_TOKENS_STREAM: list[dict[str, Any]] = [
    text_chunk("Once upon"),
    {**text_chunk(" a", finish="MAX_TOKENS"), "usageMetadata": usage(3, 2)},
]
SAFETY_STREAM: list[dict[str, Any]] = [
    text_chunk("Well,"),
    {"candidates": [{"finishReason": "SAFETY"}], "usageMetadata": usage(3, 1)},
]
BLOCKED_STREAM: list[dict[str, Any]] = [
    {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
    }
]


def sse_body(events: list[dict[str, Any]]) -> bytes:
    # Gemini frames with CRLF and ends the body without any marker.
    return b"".join(b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events)


async def _chunks(body: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


async def run(
    events: list[dict[str, Any]], *, include_usage: bool = True
) -> tuple[list[dict[str, Any]], Any]:
    """Feed a stream through the parser; return the client's chunks and the parser."""
    for event in events:
        validate_gemini_response(orjson.dumps(event))
    parser = ADAPTER.stream_parser()
    deltas: list[StreamDelta] = []
    async for sse_event in iter_sse(_chunks(sse_body(events))):
        deltas.extend(parser.feed(sse_event))
    assert not parser.finished  # no end marker: the body's end decides
    head = {
        "id": "chatcmpl-t",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gemini-2.5-flash",
    }
    chunks: list[dict[str, Any]] = []
    last_usage: Usage | None = None
    for delta in deltas:  # as job.py: usage kept from the last delta that has it
        if delta.usage is not None:
            last_usage = delta.usage
        if delta.choices:
            chunk = {**head, "choices": delta.choices}
            if include_usage:
                chunk["usage"] = None
            chunks.append(chunk)
    if include_usage and last_usage is not None:
        chunks.append({**head, "choices": [], "usage": last_usage.to_openai()})
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        validate_openai("CreateChatCompletionStreamResponse", chunk)
    return chunks, parser


def check_invariants(chunks: list[dict[str, Any]]) -> None:
    """Role first, each tool index first seen with id+type+name, one finish per choice."""
    seen_role: set[int] = set()
    finished: dict[int, int] = {}
    tools_seen: set[tuple[int, int]] = set()
    for chunk in chunks:
        for choice in chunk["choices"]:
            i = choice["index"]
            if i not in seen_role:
                assert choice["delta"].get("role") == "assistant"
                seen_role.add(i)
            for call in choice["delta"].get("tool_calls") or ():
                if (i, call["index"]) not in tools_seen:
                    assert call["id"] and call["type"] == "function" and call["function"]["name"]
                    tools_seen.add((i, call["index"]))
            if choice["finish_reason"] is not None:
                finished[i] = finished.get(i, 0) + 1
    assert finished and all(count == 1 for count in finished.values())


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["delta"].get("content") or "" for ch in chunks for c in ch["choices"])


def finish_of(chunks: list[dict[str, Any]]) -> str:
    return str(
        next(c["finish_reason"] for ch in chunks for c in ch["choices"] if c["finish_reason"])
    )


class TestStream:
    async def test_text_with_thoughts_hidden_and_last_usage(self) -> None:
        chunks, parser = await run(TEXT_STREAM)
        check_invariants(chunks)
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Here you go: "}
        assert content_of(chunks) == "Here you go: Paris."
        assert finish_of(chunks) == "stop"
        assert parser.saw_finish_reason
        assert chunks[-1]["choices"] == []
        assert (
            chunks[-1]["usage"]
            == Usage(prompt_tokens=5, completion_tokens=193, reasoning_tokens=186).to_openai()
        )

    async def test_function_call_from_the_doc(self) -> None:
        chunks, parser = await run(CALL_STREAM)
        check_invariants(chunks)
        call_choice = chunks[1]["choices"][0]
        assert call_choice["finish_reason"] == "tool_calls"
        [call] = call_choice["delta"]["tool_calls"]
        assert call["index"] == 0
        assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
        assert decode_call_id(call["id"]) == (None, SIGNATURE)
        assert parser.saw_finish_reason

    async def test_parallel_calls_across_events(self) -> None:
        chunks, _ = await run(PARALLEL_STREAM, include_usage=False)
        check_invariants(chunks)
        calls = [
            c
            for ch in chunks
            for ch_c in ch["choices"]
            for c in ch_c["delta"].get("tool_calls") or ()
        ]
        assert [(c["index"], c["function"]["name"]) for c in calls] == [
            (0, "get_weather"),
            (1, "get_time"),
            (2, "get_weather"),
        ]
        assert calls[2]["id"] == "fc_3"
        assert calls[1]["function"]["arguments"] == "{}"
        assert len({c["id"] for c in calls}) == 3
        assert finish_of(chunks) == "tool_calls"  # STOP came after the calls, in its own event
        assert all("usage" not in ch for ch in chunks)

    @pytest.mark.parametrize(
        ("events", "reason", "text"),
        [
            (MAX_TOKENS_STREAM, "length", "Once upon a"),
            (SAFETY_STREAM, "content_filter", "Well,"),
            (BLOCKED_STREAM, "content_filter", ""),
        ],
    )
    async def test_endings(self, events: list[dict[str, Any]], reason: str, text: str) -> None:
        chunks, parser = await run(events)
        check_invariants(chunks)
        assert finish_of(chunks) == reason
        assert content_of(chunks) == text
        assert parser.saw_finish_reason

    async def test_a_cut_stream_is_not_finished(self) -> None:
        _, parser = await run(TEXT_STREAM[:2])
        assert not parser.saw_finish_reason

    async def test_two_candidates_finish_separately(self) -> None:
        events: list[dict[str, Any]] = [
            {
                "candidates": [
                    {"content": {"role": "model", "parts": [{"text": "A"}]}},
                    {"content": {"role": "model", "parts": [{"text": "B"}]}, "index": 1},
                ]
            },
            {
                "candidates": [
                    {"content": {"role": "model", "parts": [{"text": "!"}]}, "finishReason": "STOP"}
                ]
            },
        ]
        chunks, parser = await run(events, include_usage=False)
        assert not parser.saw_finish_reason  # candidate 1 is still open
        events.append(
            {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": "?"}]},
                        "finishReason": "STOP",
                        "index": 1,
                    }
                ]
            }
        )
        chunks, parser = await run(events, include_usage=False)
        check_invariants(chunks)
        assert parser.saw_finish_reason

    @pytest.mark.parametrize(
        ("error", "kind", "status"),
        [
            (
                {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"},
                RetryableProviderError,
                503,
            ),
            (
                {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"},
                RetryableProviderError,
                502,
            ),
            (
                {
                    "code": 400,
                    "message": "Request contains an invalid argument.",
                    "status": "INVALID_ARGUMENT",
                },
                FinalProviderError,
                400,
            ),
        ],
    )
    async def test_error_event_mid_stream(
        self, error: dict[str, Any], kind: type[ProviderError], status: int
    ) -> None:
        parser = ADAPTER.stream_parser()
        events = [
            e async for e in iter_sse(_chunks(sse_body([text_chunk("Hel"), {"error": error}])))
        ]
        assert parser.feed(events[0])
        with pytest.raises(kind) as caught:
            parser.feed(events[1])
        assert caught.value.http_status == status

    async def test_array_wrapped_error_and_garbage(self) -> None:
        parser = ADAPTER.stream_parser()
        events = [
            e
            async for e in iter_sse(
                _chunks(
                    b'data: [{"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}]\r\n\r\n'
                )
            )
        ]
        with pytest.raises(RetryableProviderError) as caught:
            parser.feed(events[0])
        assert caught.value.http_status == 429
        events = [e async for e in iter_sse(_chunks(b"data: {not json\r\n\r\n"))]
        with pytest.raises(RetryableProviderError):
            ADAPTER.stream_parser().feed(events[0])


class TestIdsAcrossStreamedTurns:
    async def test_streamed_calls_map_back(self) -> None:
        chunks, _ = await run(CALL_STREAM + [])
        calls = [
            c
            for ch in chunks
            for ch_c in ch["choices"]
            for c in ch_c["delta"].get("tool_calls") or ()
        ]
        # What an OpenAI client assembles from the deltas and sends next turn.
        assistant = {
            "role": "assistant",
            "content": content_of(chunks),
            "tool_calls": [
                {"id": c["id"], "type": "function", "function": c["function"]} for c in calls
            ],
        }
        body = translate_body(
            {
                "messages": [
                    {"role": "user", "content": "Weather?"},
                    assistant,
                    {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"temp": 18}'},
                ]
            }
        )
        validate_gemini_request(body)
        assert body["contents"][1]["parts"] == [
            {"text": "Here you go: "},
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                "thoughtSignature": SIGNATURE,
            },
        ]
        assert body["contents"][2]["parts"] == [
            {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}}
        ]
