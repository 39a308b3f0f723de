"""Gemini `GenerateContentResponse` -> OpenAI choices and usage (wire-formats doc §3.4, §5).

candidates[k]          -> choices[k] (index = candidate.index)
text parts             -> message.content, joined; `thought: true` parts never leak
functionCall parts     -> message.tool_calls (args object -> compact JSON string; ids
                          per `ids.py`, carrying any thoughtSignature)
finishReason           -> finish_reason per §5.1 (STOP with calls -> tool_calls)
promptFeedback.blockReason without candidates -> one choice, content_filter, no content
usageMetadata          -> Usage per §5.2
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import structlog

from services.worker.providers.base import Completion, bad_response, load_json
from services.worker.providers.google.errors import error_object, stream_error
from services.worker.providers.google.ids import encode_call_id
from shared.errors import RetryableProviderError
from shared.messages import Usage

log = structlog.get_logger("worker.providers.google")

_CONTENT_FILTER = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "IMAGE_OTHER",
        "NO_IMAGE",
        "LANGUAGE",
        "OTHER",
    }
)
_STOP = frozenset(
    {
        "STOP",
        "FINISH_REASON_UNSPECIFIED",
        "MALFORMED_FUNCTION_CALL",
        "UNEXPECTED_TOOL_CALL",
        "TOO_MANY_TOOL_CALLS",
    }
)


def finish_reason(reason: object, *, had_tool_calls: bool) -> str:
    """OpenAI's finish_reason for a Gemini finishReason (§5.1); unknown values end as stop."""
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _CONTENT_FILTER:
        return "content_filter"
    if reason == "STOP" and had_tool_calls:
        return "tool_calls"  # Gemini has no finish reason of its own for calls
    if reason not in _STOP:
        log.warning("unknown_finish_reason", provider="google", reason=str(reason)[:64])
    return "stop"


def usage_from(metadata: object) -> Usage | None:
    """OpenAI usage from `usageMetadata` (§5.2); None when there is none."""
    if not isinstance(metadata, Mapping) or not metadata:
        return None

    def count(name: str) -> int:
        value = metadata.get(name)
        return value if isinstance(value, int) and value > 0 else 0

    prompt = count("promptTokenCount") + count("toolUsePromptTokenCount")
    candidates = count("candidatesTokenCount")
    thoughts = count("thoughtsTokenCount")
    completion = candidates + thoughts
    total = count("totalTokenCount")
    if thoughts and total and prompt + candidates == total:
        completion = candidates  # this server already counted thoughts among candidates
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=count("cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def translate_parts(parts: object) -> tuple[str | None, list[dict[str, Any]]]:
    """(visible text or None, tool calls without their stream `index`) of a Content's parts."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, Mapping) or part.get("thought") is True:
            continue  # thought summaries are not the answer
        text = part.get("text")
        if isinstance(text, str):
            texts.append(text)
        call = part.get("functionCall")
        if isinstance(call, Mapping):
            args = call.get("args")
            calls.append(
                {
                    "id": encode_call_id(call.get("id"), part.get("thoughtSignature")),
                    "type": "function",
                    "function": {
                        "name": str(call.get("name") or ""),
                        "arguments": orjson.dumps(
                            args if isinstance(args, Mapping) else {}
                        ).decode(),
                    },
                }
            )
    text = "".join(texts)
    return (text or None), calls


def candidate_index(candidate: Mapping[str, Any]) -> int:
    # proto3 JSON omits zero values: a candidate without "index" is candidate 0.
    index = candidate.get("index")
    return index if isinstance(index, int) else 0


def decode(body: bytes, provider: str) -> Mapping[str, Any]:
    """A response object, or the right error for a body that is one or is unreadable."""
    data = load_json(body, provider)
    err = error_object(data)
    if err is not None:
        raise stream_error(err, provider)
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, Mapping):
        raise bad_response(provider, "is not a JSON object")
    return data


def block_reason(data: Mapping[str, Any]) -> str | None:
    feedback = data.get("promptFeedback")
    if isinstance(feedback, Mapping) and feedback.get("blockReason"):
        return str(feedback["blockReason"])
    return None


def parse_response(body: bytes, provider: str = "google") -> Completion:
    data = decode(body, provider)
    usage = usage_from(data.get("usageMetadata"))
    candidates = data.get("candidates")
    choices: list[dict[str, Any]] = []
    for candidate in candidates if isinstance(candidates, list) else ():
        if not isinstance(candidate, Mapping):
            continue
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, Mapping) else None
        text, calls = translate_parts(parts)
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        choices.append(
            {
                "index": candidate_index(candidate),
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(
                    candidate.get("finishReason"), had_tool_calls=bool(calls)
                ),
            }
        )
    if not choices:
        if block_reason(data) is None:
            raise RetryableProviderError(
                f"{provider} returned a response without candidates", code="bad_response"
            )
        # The prompt itself was blocked: an answer, not an error (HTTP 200 upstream too).
        choices.append(
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": None},
                "logprobs": None,
                "finish_reason": "content_filter",
            }
        )
    choices.sort(key=lambda c: c["index"])
    return Completion(choices=choices, usage=usage)
