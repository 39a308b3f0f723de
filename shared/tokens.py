"""Token counts for when a provider reports none (an interrupted or cancelled stream).

A documented approximation: about four characters of English per token, the rule of
thumb OpenAI publishes for its tokenizers, plus a few tokens of framing per message.
Rows billed from it are marked `usage_estimated`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def estimate_text_tokens(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping)
        )
    return ""


def estimate_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    total = 0
    for message in messages:
        total += TOKENS_PER_MESSAGE + estimate_text_tokens(message_text(message))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            total += estimate_text_tokens(str(function.get("name", "")))
            total += estimate_text_tokens(str(function.get("arguments", "")))
    return total
