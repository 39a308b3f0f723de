"""Gemini `streamGenerateContent?alt=sse` events -> OpenAI chunk choices (doc §3.5).

Each SSE `data:` event is a whole GenerateContentResponse holding only the new parts.
Per candidate the parser remembers whether the role was sent, how many tool calls went
out (a call's `index` is its position among this candidate's calls) and whether one did
(a later STOP then means `tool_calls`). A function call arrives complete in one event, so
its single delta carries id, type, name and the full arguments.

`usageMetadata` is a cumulative snapshot: every one is passed on and the worker keeps the
last. The body ends without a marker: a body that closes after every candidate got its
`finishReason` (`saw_finish_reason`) ended normally; one that closes earlier was cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.worker.providers.base import SseEvent, StreamDelta
from services.worker.providers.google.response import (
    block_reason,
    candidate_index,
    decode,
    finish_reason,
    translate_parts,
    usage_from,
)


@dataclass(slots=True)
class _Candidate:
    sent_role: bool = False
    tool_calls: int = 0
    finished: bool = False


class GeminiStreamParser:
    __slots__ = ("_candidates", "_provider", "saw_finish_reason")

    def __init__(self, provider: str = "google") -> None:
        self._provider = provider
        self._candidates: dict[int, _Candidate] = {}
        self.saw_finish_reason = False

    @property
    def finished(self) -> bool:
        # Gemini sends no end marker; see `saw_finish_reason`.
        return False

    def feed(self, event: SseEvent) -> list[StreamDelta]:
        if not event.data.strip():
            return []
        data = decode(event.data, self._provider)  # raises for an in-stream `error`
        usage = usage_from(data.get("usageMetadata"))
        choices: list[dict[str, Any]] = []
        candidates = data.get("candidates")
        for candidate in candidates if isinstance(candidates, list) else ():
            if isinstance(candidate, Mapping):
                choice = self._choice(candidate)
                if choice is not None:
                    choices.append(choice)
        if not choices and not self._candidates and block_reason(data) is not None:
            choices.append(self._blocked())
        if self._candidates:
            self.saw_finish_reason = all(c.finished for c in self._candidates.values())
        if not choices and usage is None:
            return []
        return [StreamDelta(choices=choices, usage=usage)]

    def _choice(self, candidate: Mapping[str, Any]) -> dict[str, Any] | None:
        index = candidate_index(candidate)
        state = self._candidates.setdefault(index, _Candidate())
        content = candidate.get("content")
        text, calls = translate_parts(
            content.get("parts") if isinstance(content, Mapping) else None
        )
        delta: dict[str, Any] = {}
        if text:
            delta["content"] = text
        if calls:
            for call in calls:
                call["index"] = state.tool_calls
                state.tool_calls += 1
            delta["tool_calls"] = calls
        reason = candidate.get("finishReason")
        finish = None
        if reason and not state.finished:
            state.finished = True
            finish = finish_reason(reason, had_tool_calls=state.tool_calls > 0)
        if not delta and finish is None:
            return None
        if not state.sent_role:
            state.sent_role = True
            delta = {"role": "assistant", **delta}
            if finish is not None and "content" not in delta and "tool_calls" not in delta:
                delta["content"] = ""
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    def _blocked(self) -> dict[str, Any]:
        # The prompt was refused before any candidate: one choice, ended by the filter.
        self._candidates[0] = _Candidate(sent_role=True, finished=True)
        return {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": "content_filter",
        }
