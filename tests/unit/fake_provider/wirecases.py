"""One text request per wire format, so behaviour shared by all wires is tested once for each.

`CASES` holds the four formats; a case builds the path, headers and body of a request whose
last user message is `text` (system prompt "Be nice.") and knows how its stream looks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODEL = "test-model"


@dataclass(frozen=True)
class WireCase:
    name: str
    chat_path: str  # stream path for Gemini differs, see `path`
    headers: dict[str, str]
    separator: bytes  # between SSE events
    content_marker: bytes  # occurs once in each content event of a text stream
    end_marker: bytes  # occurs only in a complete stream's last events
    error_marker: bytes  # occurs only in the mid-stream error event

    def path(self, *, stream: bool) -> str:
        if self.name == "gemini":
            action = "streamGenerateContent?alt=sse" if stream else "generateContent"
            return f"/v1beta/models/{MODEL}:{action}"
        return self.chat_path

    def body(self, text: str, *, stream: bool = False, **extra: Any) -> dict[str, Any]:
        if self.name == "gemini":
            return {
                "systemInstruction": {"parts": [{"text": "Be nice."}]},
                "contents": [{"role": "user", "parts": [{"text": text}]}],
                **extra,
            }
        if self.name == "anthropic":
            return {
                "model": MODEL,
                "max_tokens": 1000,
                "system": "Be nice.",
                "messages": [{"role": "user", "content": text}],
                **({"stream": True} if stream else {}),
                **extra,
            }
        return {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Be nice."},
                {"role": "user", "content": text},
            ],
            **({"stream": True} if stream else {}),
            **extra,
        }

    def count_content(self, raw: bytes) -> int:
        return raw.count(self.content_marker)


BEARER = {"Authorization": "Bearer sk-fake"}
OPENAI = WireCase(
    name="openai",
    chat_path="/v1/chat/completions",
    headers=BEARER,
    separator=b"\n\n",
    content_marker=b'"delta":{"content"',
    end_marker=b"data: [DONE]",
    error_marker=b'data: {"error"',
)
TOGETHER = WireCase(
    name="together",
    chat_path="/together/v1/chat/completions",
    headers=BEARER,
    separator=b"\n\n",
    content_marker=b'"delta":{"content"',
    end_marker=b"data: [DONE]",
    error_marker=b'data: {"error"',
)
ANTHROPIC = WireCase(
    name="anthropic",
    chat_path="/v1/messages",
    headers={"x-api-key": "sk-ant-fake", "anthropic-version": "2023-06-01"},
    separator=b"\n\n",
    content_marker=b"event: content_block_delta",
    end_marker=b"event: message_stop",
    error_marker=b"event: error",
)
GEMINI = WireCase(
    name="gemini",
    chat_path="",
    headers={"x-goog-api-key": "AIza-fake"},
    separator=b"\r\n\r\n",
    content_marker=b'"parts":[{"text"',
    end_marker=b'"finishReason"',
    error_marker=b'data: {"error"',
)
CASES = [OPENAI, TOGETHER, ANTHROPIC, GEMINI]
