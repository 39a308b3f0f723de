"""OpenAI wire payloads for the fake provider: answers, chunks, usage and error bodies.

Everything is deterministic for a given request, so tests can assert exact numbers:
prompt tokens are whitespace-separated words plus 4 per message, completion tokens are
the content pieces sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

SYSTEM_FINGERPRINT = "fp_fake"
DONE_EVENT = b"data: [DONE]\n\n"

# OpenAI's (type, code, message) for the statuses a script is likely to ask for.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", "invalid_value", "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported.",
    ),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    408: ("server_error", "timeout", "Request timed out."),
    409: ("invalid_request_error", "conflict", "The request conflicted with another one."),
    413: ("invalid_request_error", "request_too_large", "Request too large."),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", "server_is_overloaded", "The engine is currently overloaded."),
    504: ("server_error", "timeout", "Gateway timeout."),
    529: ("server_error", "overloaded", "The server is overloaded."),
}
_QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."


def error_body(
    status: int,
    *,
    message: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """OpenAI's error envelope for `status`; `code` overrides the usual one."""
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    err_type, default_code, default_message = _ERRORS.get(
        status, (default_type, None, f"HTTP {status}.")
    )
    if code == "insufficient_quota":
        err_type, default_message = "insufficient_quota", _QUOTA_MESSAGE
    return orjson.dumps(
        {
            "error": {
                "message": message or default_message,
                "type": err_type,
                "param": param,
                "code": code if code is not None else default_code,
            }
        }
    )


def split_reply(text: str, count: int) -> tuple[str, ...]:
    """`text` in `count` pieces that concatenate back to it, cut at word boundaries.

    With fewer words than pieces asked for, cuts fall inside words instead (evenly by
    characters), so a benchmark gets the chunk count it asked for; never more pieces
    than characters.
    """
    if not text or count <= 1:
        return (text,) if text else ()
    words = _words(text)
    if len(words) >= count:
        return tuple("".join(group) for group in _even_groups(words, count))
    return tuple("".join(group) for group in _even_groups(list(text), min(count, len(text))))


def _words(text: str) -> list[str]:
    """Words with their trailing whitespace; leading whitespace stays with the first."""
    words: list[str] = []
    start = 0
    i = 0
    n = len(text)
    while i < n and text[i].isspace():
        i += 1
    while i < n:
        while i < n and not text[i].isspace():
            i += 1
        while i < n and text[i].isspace():
            i += 1
        words.append(text[start:i])
        start = i
    return words or [text]


def _even_groups(items: list[str], count: int) -> Iterable[list[str]]:
    size, extra = divmod(len(items), count)
    start = 0
    for k in range(count):
        end = start + size + (1 if k < extra else 0)
        yield items[start:end]
        start = end


def message_text(message: object) -> str:
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def count_prompt_tokens(messages: list[Any]) -> int:
    return sum(len(message_text(m).split()) + 4 for m in messages)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion(
    *,
    completion_id: str,
    created: int,
    model: str,
    content: str,
    finish_reason: str,
    usage_obj: dict[str, Any],
) -> bytes:
    return orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage_obj,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
    )


class ChunkWriter:
    """Encodes the SSE events of one stream; the fixed fields are encoded once."""

    __slots__ = ("_head", "_tail")

    def __init__(self, *, completion_id: str, created: int, model: str, include_usage: bool):
        head = orjson.dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }
        )
        # `{...fixed fields...,"choices":` + choices + `,"usage":null}` or `}`
        self._head = b"data: " + head[:-1] + b',"choices":'
        self._tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"

    def _choice(self, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._head + orjson.dumps([choice]) + self._tail

    def role(self) -> bytes:
        return self._choice({"role": "assistant", "content": "", "refusal": None}, None)

    def content(self, piece: str) -> bytes:
        return self._choice({"content": piece}, None)

    def finish(self, reason: str) -> bytes:
        return self._choice({}, reason)

    def usage(self, usage_obj: dict[str, Any]) -> bytes:
        return self._head + b"[]," + b'"usage":' + orjson.dumps(usage_obj) + b"}\n\n"


def error_event(message: str, *, code: str | None = "server_error") -> bytes:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"
