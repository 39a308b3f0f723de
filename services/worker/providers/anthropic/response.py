"""Anthropic Message -> OpenAI completion choice and usage (wire-formats doc §2.4, §5.1, §5.2).

    text blocks          -> message.content (concatenated; null when there are none)
    tool_use blocks      -> message.tool_calls (arguments = compact JSON string)
    JSON-mode tool_use   -> message.content, finish_reason "stop" (see request.py)
    thinking blocks      -> dropped: OpenAI's message has no field for them
    stop_reason          -> finish_reason, per `FINISH_REASONS`
    usage                -> prompt = input + cache read + cache write; cached = cache read
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import structlog

from services.worker.providers.anthropic.errors import error_from_payload
from services.worker.providers.anthropic.tools import JSON_TOOL_NAME
from services.worker.providers.base import Completion, load_json_object
from shared.errors import RetryableProviderError
from shared.messages import Usage

log = structlog.get_logger("worker.providers.anthropic")

# Anthropic stop_reason -> OpenAI finish_reason (§5.1).
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: object, *, has_tool_calls: bool) -> str:
    """OpenAI's finish_reason for an Anthropic stop_reason.

    `tool_use` without a client-visible tool call was the JSON-mode tool, whose answer
    is plain content: `stop` (§5.1). Unknown values end as `stop`: OpenAI SDKs validate
    the enum, so an unknown string must never reach a client.
    """
    mapped = FINISH_REASONS.get(stop_reason) if isinstance(stop_reason, str) else None
    if mapped is None:
        if stop_reason is not None:
            log.warning("anthropic_unknown_stop_reason", stop_reason=str(stop_reason)[:64])
        return "stop"
    if mapped == "tool_calls" and not has_tool_calls:
        return "stop"
    return mapped


def _count(raw: Mapping[str, Any], key: str) -> int:
    value = raw.get(key)  # the cache counters may be absent or null
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_anthropic(raw: object) -> Usage | None:
    """OpenAI-shaped usage from Anthropic counters; None when there are none."""
    if not isinstance(raw, Mapping):
        return None
    cache_read = _count(raw, "cache_read_input_tokens")
    details = raw.get("output_tokens_details")
    thinking = _count(details, "thinking_tokens") if isinstance(details, Mapping) else 0
    return Usage(
        # Anthropic's input_tokens excludes cache reads and writes; all three were read.
        prompt_tokens=_count(raw, "input_tokens")
        + cache_read
        + _count(raw, "cache_creation_input_tokens"),
        completion_tokens=_count(raw, "output_tokens"),
        cached_tokens=cache_read,
        reasoning_tokens=thinking,
    )


def tool_call(block: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call for a `tool_use` block; its `toolu_...` id passes unchanged."""
    return {
        "id": str(block.get("id") or ""),
        "type": "function",
        "function": {
            "name": str(block.get("name") or ""),
            "arguments": json_text(block.get("input")),
        },
    }


def json_text(value: object) -> str:
    """Compact JSON of a tool input; a missing input is the empty object."""
    return orjson.dumps(value if isinstance(value, dict) else {}).decode()


def parse_response(body: bytes, provider: str) -> Completion:
    """One OpenAI choice (plus usage) for a whole Anthropic `message` body."""
    data = load_json_object(body, provider)
    if data.get("type") == "error":
        raise error_from_payload(data, provider)
    content = data.get("content")
    if not isinstance(content, list):
        raise RetryableProviderError(
            f"{provider} returned a message without content", code="bad_response"
        )
    texts: list[str] = []
    json_answers: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use" and block.get("name") == JSON_TOOL_NAME:
            json_answers.append(json_text(block.get("input")))
        elif kind == "tool_use":
            calls.append(tool_call(block))
    # In JSON mode the answer is the tool input alone; text around it would break parsing.
    text = "".join(json_answers) if json_answers else "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(data.get("stop_reason"), has_tool_calls=bool(calls)),
    }
    return Completion(choices=[choice], usage=usage_from_anthropic(data.get("usage")))
