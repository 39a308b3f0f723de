"""Anthropic stream events -> OpenAI chunk choices (wire-formats doc §2.5, §6.3).

Anthropic frames each event as `event: <type>` + `data: <json>`; the JSON repeats the
type, which is what we dispatch on. One parser per upstream stream:

    message_start                 -> role chunk; input usage remembered
    content_block_start text      -> content, if the block opens with text
    content_block_start tool_use  -> tool_calls[{index, id, type, name, arguments: ""}]
    text_delta                    -> content
    input_json_delta              -> tool_calls[{index, arguments piece}] at the same index
    content_block_stop (tool_use) -> arguments "{}" if no JSON came, so clients parse it
    message_delta                 -> finish_reason (once) and the combined usage
    message_stop                  -> finished
    ping, thinking/signature/citations deltas, unknown events -> nothing
    error                         -> raises (overloaded / api errors are retryable)

The OpenAI tool index counts tool calls only; Anthropic's block `index` also counts text
and thinking blocks. JSON-mode answers (the synthetic tool in request.py) stream as
content and end with `stop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from services.worker.providers.anthropic.errors import error_from_payload
from services.worker.providers.anthropic.response import (
    finish_reason,
    json_text,
    usage_from_anthropic,
)
from services.worker.providers.anthropic.tools import JSON_TOOL_NAME
from services.worker.providers.base import SseEvent, StreamDelta
from shared.errors import RetryableProviderError
from shared.messages import Usage

# What a content block becomes on the OpenAI side.
_TEXT, _TOOL, _JSON, _SKIP = "text", "tool", "json", "skip"
_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


@dataclass(slots=True)
class _Block:
    kind: str
    tool_index: int = -1
    got_input: bool = False
    start_input: Any = None


class AnthropicStreamParser:
    """Translates one Anthropic Messages stream, event by event."""

    __slots__ = (
        "_blocks",
        "_done",
        "_finished",
        "_has_tool_calls",
        "_provider",
        "_started",
        "_tool_count",
        "_usage",
    )

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._blocks: dict[int, _Block] = {}  # by Anthropic block index
        self._tool_count = 0
        self._has_tool_calls = False
        self._usage: dict[str, Any] = {}
        self._started = False
        self._finished = False
        self._done = False

    @property
    def finished(self) -> bool:
        """True once `message_stop` arrived."""
        return self._done

    @property
    def saw_finish_reason(self) -> bool:
        """True once `message_delta` gave the stop reason: the answer is complete."""
        return self._finished

    def feed(self, event: SseEvent) -> list[StreamDelta]:
        if not event.data.strip():
            return []
        try:
            payload = orjson.loads(event.data)
        except orjson.JSONDecodeError as exc:
            raise RetryableProviderError(
                f"{self._provider} sent a malformed stream event", code="bad_response"
            ) from exc
        if not isinstance(payload, dict):
            raise RetryableProviderError(
                f"{self._provider} sent a stream event that is not an object",
                code="bad_response",
            )
        kind = payload.get("type") or event.event
        if kind == "error" or event.event == "error":
            raise error_from_payload(payload, self._provider)
        out: list[StreamDelta] = []
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                self._merge_usage(message.get("usage"))
            self._start(out)
        elif kind == "content_block_start":
            self._block_start(payload, out)
        elif kind == "content_block_delta":
            self._block_delta(payload, out)
        elif kind == "content_block_stop":
            self._block_stop(payload, out)
        elif kind == "message_delta":
            self._merge_usage(payload.get("usage"))
            delta = payload.get("delta")
            stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            if stop_reason is not None:
                self._finish(stop_reason, out)
        elif kind == "message_stop":
            if not self._finished:  # a stream with no stop reason still ends once
                self._finish(None, out)
            self._done = True
        # ping and event types added later carry nothing for an OpenAI client.
        return out

    # -- blocks -------------------------------------------------------------------------

    def _block_start(self, payload: dict[str, Any], out: list[StreamDelta]) -> None:
        block = payload.get("content_block")
        block = block if isinstance(block, dict) else {}
        index = _block_index(payload)
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = _Block(_TEXT)
            text = block.get("text")
            if isinstance(text, str) and text:
                self._emit({"content": text}, out)
        elif kind == "tool_use" and block.get("name") == JSON_TOOL_NAME:
            self._blocks[index] = _Block(_JSON, start_input=block.get("input"))
        elif kind == "tool_use":
            state = _Block(_TOOL, tool_index=self._tool_count, start_input=block.get("input"))
            self._blocks[index] = state
            self._tool_count += 1
            self._has_tool_calls = True
            call = {
                "index": state.tool_index,
                "id": str(block.get("id") or ""),
                "type": "function",
                "function": {"name": str(block.get("name") or ""), "arguments": ""},
            }
            self._emit({"tool_calls": [call]}, out)
        else:  # thinking, redacted_thinking, server tools: no OpenAI field
            self._blocks[index] = _Block(_SKIP)

    def _block_delta(self, payload: dict[str, Any], out: list[StreamDelta]) -> None:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return
        state = self._blocks.get(_block_index(payload))
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if isinstance(text, str) and text and (state is None or state.kind == _TEXT):
                self._emit({"content": text}, out)
        elif kind == "input_json_delta" and state is not None:
            piece = delta.get("partial_json")
            if not isinstance(piece, str) or not piece:
                return
            state.got_input = True
            if state.kind == _JSON:
                self._emit({"content": piece}, out)
            elif state.kind == _TOOL:
                call = {"index": state.tool_index, "function": {"arguments": piece}}
                self._emit({"tool_calls": [call]}, out)
        # thinking_delta, signature_delta, citations_delta: dropped, never leaked as text

    def _block_stop(self, payload: dict[str, Any], out: list[StreamDelta]) -> None:
        state = self._blocks.get(_block_index(payload))
        if state is None or state.got_input or state.kind not in (_TOOL, _JSON):
            return
        # No JSON streamed: the input given at block start (usually {}) is the whole of it.
        arguments = json_text(state.start_input)
        if state.kind == _JSON:
            self._emit({"content": arguments}, out)
        else:
            call = {"index": state.tool_index, "function": {"arguments": arguments}}
            self._emit({"tool_calls": [call]}, out)

    # -- chunks -------------------------------------------------------------------------

    def _start(self, out: list[StreamDelta]) -> None:
        if not self._started:
            self._started = True
            out.append(_delta({"role": "assistant", "content": ""}))

    def _emit(self, delta: dict[str, Any], out: list[StreamDelta]) -> None:
        self._start(out)  # the role chunk comes first even if message_start was missed
        out.append(_delta(delta))

    def _finish(self, stop_reason: object, out: list[StreamDelta]) -> None:
        if self._finished:
            return
        self._start(out)
        self._finished = True
        reason = finish_reason(stop_reason, has_tool_calls=self._has_tool_calls)
        out.append(_delta({}, finish_reason=reason, usage=usage_from_anthropic(self._usage)))

    def _merge_usage(self, raw: object) -> None:
        # message_delta counters are cumulative: later values replace earlier ones.
        if not isinstance(raw, dict):
            return
        for key in _USAGE_KEYS:
            if raw.get(key) is not None:
                self._usage[key] = raw[key]
        details = raw.get("output_tokens_details")
        if isinstance(details, dict):
            self._usage["output_tokens_details"] = details


def _block_index(payload: dict[str, Any]) -> int:
    index = payload.get("index")
    return index if isinstance(index, int) else -1


def _delta(
    delta: dict[str, Any], *, finish_reason: str | None = None, usage: Usage | None = None
) -> StreamDelta:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return StreamDelta(choices=[choice], usage=usage)
