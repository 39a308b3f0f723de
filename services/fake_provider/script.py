"""Scripted behaviour for the fake provider: what the next requests should do.

Two ways to script, with the same field names:

- a FIFO queue filled over the control API (`POST /_fake/script`), each step consumed by
  the next chat request (optionally only by a request for the step's `model` and/or
  arriving in the step's `wire` format);
- directives in the text of the last user message, for tests that drive separate
  processes and can only shape the request itself:
  `[[fake:status=429,retry_after=1]]`, `[[fake:drop_after=3]]`, `[[fake:hang]]`,
  `[[fake:tool=get_weather]]`, `[[fake:tools=get_weather+get_time]]`, `[[fake:eos]]`.

A directive overrides a queued step field by field; both override the server's config.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Self

DIRECTIVE_RE = re.compile(r"\[\[fake:([^\]]*)\]\]")
DIRECTIVE_MARK = "[[fake:"


class ScriptError(ValueError):
    """A step or directive names an unknown field or has a bad value."""


@dataclass(frozen=True, slots=True)
class Step:
    """What one request should do; None leaves a field to the next layer down."""

    status: int | None = None  # answer with this HTTP status and the wire's error body for it
    code: str | None = None  # override the error code (e.g. insufficient_quota on a 429)
    retry_after: float | None = None  # seconds: `retry-after` header (Gemini: also RetryInfo)
    ttft_ms: int | None = None
    chunks: int | None = None
    chunk_delay_ms: int | None = None
    drop_after: int | None = None  # close the connection after this many content chunks
    error_event_after: int | None = None  # send a `data: {"error": ...}` event after N chunks
    hang: bool | None = None  # accept and never answer, until the client goes away
    reply: str | None = None
    tool: str | None = None  # call this offered tool instead of answering text
    tools: str | None = None  # `a+b`: call these offered tools in parallel
    eos: bool | None = None  # Together only: finish_reason `eos` instead of `stop`
    model: str | None = None  # queued steps only: consumed only by requests for this model
    wire: str | None = None  # queued steps only: consumed only by requests in this format

    @classmethod
    def from_json(cls, raw: object) -> Self:
        if not isinstance(raw, dict):
            raise ScriptError("a script step must be a JSON object")
        return cls(**{name: _convert(name, value) for name, value in raw.items()})

    @classmethod
    def from_directives(cls, text: str) -> Self | None:
        """The merged directives found in `text`, or None when there are none."""
        if DIRECTIVE_MARK not in text:  # the common case costs one substring search
            return None
        values: dict[str, Any] = {}
        for match in DIRECTIVE_RE.finditer(text):
            for item in match.group(1).split(","):
                item = item.strip()
                if not item:
                    continue
                name, eq, value = item.partition("=")
                name = name.strip()
                if name in _QUEUE_ONLY:
                    raise ScriptError(f"`{name}` is only valid in queued script steps")
                values[name] = _convert(name, value.strip() if eq else True)
        return cls(**values) if values else None

    def over(self, base: Step) -> Step:
        """This step's fields laid over `base`."""
        changes = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(base, **{k: v for k, v in changes.items() if v is not None})


_INT_FIELDS = frozenset(
    {"status", "ttft_ms", "chunks", "chunk_delay_ms", "drop_after", "error_event_after"}
)
_STR_FIELDS = frozenset({"code", "reply", "tool", "tools", "model", "wire"})
_BOOL_FIELDS = frozenset({"hang", "eos"})
_QUEUE_ONLY = frozenset({"model", "wire"})
WIRES = frozenset({"openai", "together", "anthropic", "gemini"})
_NAMES = frozenset(f.name for f in fields(Step))


def _convert(name: str, value: object) -> Any:
    if name not in _NAMES:
        raise ScriptError(f"unknown fake field {name!r}; known: {', '.join(sorted(_NAMES))}")
    if value is None:
        return None
    try:
        if name in _INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ValueError
            number = int(value)
            if number < 0:
                raise ValueError
            return number
        if name == "retry_after":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            return float(value)
        if name in _BOOL_FIELDS:
            if isinstance(value, str):
                return value.lower() in {"1", "true", "yes", "on"}
            if isinstance(value, bool):
                return value
            raise ValueError
        if name == "wire" and value not in WIRES:
            raise ValueError
        if name in _STR_FIELDS and isinstance(value, str):
            return value
        raise ValueError
    except ValueError:
        raise ScriptError(f"bad value for fake field {name!r}: {value!r}") from None


class Script:
    """The queue of steps waiting for requests (per app, never shared)."""

    __slots__ = ("_steps",)

    def __init__(self) -> None:
        self._steps: list[Step] = []

    def __len__(self) -> int:
        return len(self._steps)

    def push(self, steps: Iterable[Step]) -> None:
        self._steps.extend(steps)

    def take(self, model: str, wire: str) -> Step | None:
        """The first step for `model` and `wire` (or for any), removed from the queue."""
        for i, step in enumerate(self._steps):
            if (step.model is None or step.model == model) and (
                step.wire is None or step.wire == wire
            ):
                return self._steps.pop(i)
        return None

    def clear(self) -> int:
        count = len(self._steps)
        self._steps.clear()
        return count

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {f.name: getattr(s, f.name) for f in fields(s) if getattr(s, f.name) is not None}
            for s in self._steps
        ]


def parse_steps(raw: object) -> list[Step]:
    """A JSON list of steps (a single object is taken as a list of one)."""
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list):
        raise ScriptError("the script must be a JSON list of step objects")
    return [Step.from_json(item) for item in raw]
