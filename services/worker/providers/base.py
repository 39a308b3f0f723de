"""What every provider adapter offers, and the plain data that flows through it.

An adapter only translates; the worker owns the single `aiohttp.ClientSession` and does
the I/O (`services/worker/upstream.py`). Each adapter is one module exposing the same
four functions, registered in `providers/__init__.py`:

    build_request(req, target) -> HttpCall
    parse_response(body) -> Completion
    stream_parser() -> StreamParser           # one per upstream stream
    classify_error(status, headers, body, provider) -> ProviderError

One optional hook, for an adapter that needs I/O before it can translate (Gemini takes
images only as bytes, so it downloads image URLs first):

    async prepare(req, media, target) -> ChatRequest

The worker awaits it before each call to that adapter, with a `MediaSource` bound to its
shared session and the operator's fetch policy, and translates the request it returns.
Errors it raises are `ProviderError`s like any other (a bad image URL is a
`FinalProviderError`: the client's to fix, no fallback).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from shared.catalog import Offer, ProviderConfig
from shared.errors import ProviderError, RetryableProviderError
from shared.messages import Usage


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The client's validated OpenAI request body, as parsed once by the worker."""

    body: Mapping[str, Any]
    stream: bool
    include_usage: bool


@dataclass(frozen=True, slots=True)
class Target:
    """One candidate for a call: a provider's offer of a catalog model, with credentials."""

    model_id: str
    provider: ProviderConfig
    offer: Offer
    api_key: str
    base_url: str

    @property
    def name(self) -> str:
        return self.provider.name


@dataclass(frozen=True, slots=True)
class HttpCall:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True)
class Completion:
    """A whole non-streaming answer, normalised to OpenAI choices."""

    choices: list[dict[str, Any]]
    usage: Usage | None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. system_fingerprint


@dataclass(slots=True)
class StreamDelta:
    """What one upstream stream event contributes: OpenAI chunk choices and/or usage."""

    choices: list[dict[str, Any]]
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str  # "" when the upstream sends no `event:` line
    data: bytes


class StreamParser(Protocol):
    def feed(self, event: SseEvent) -> list[StreamDelta]:
        """Translate one SSE event. Raises `ProviderError` for an in-stream error event."""
        ...

    @property
    def finished(self) -> bool:
        """True once the upstream sent its end marker (a normal end of stream)."""
        ...

    @property
    def saw_finish_reason(self) -> bool:
        """True once every choice has ended; a body that closes then is a normal end too."""
        ...


class MediaSource(Protocol):
    """Fetches client-supplied media safely (see `services/worker/media.py`)."""

    async def fetch_image(self, url: str, *, max_bytes: int | None = None) -> tuple[str, bytes]:
        """(mime type, bytes) of an image URL. Raises a `FinalProviderError` (400)."""
        ...


class PreparingAdapter(Protocol):
    """The optional `prepare` hook (module docstring); adapters without it skip it."""

    async def prepare(self, req: ChatRequest, media: MediaSource, target: Target) -> ChatRequest: ...


class ProviderAdapter(Protocol):
    def build_request(self, req: ChatRequest, target: Target) -> HttpCall: ...

    def parse_response(self, body: bytes) -> Completion: ...

    def stream_parser(self) -> StreamParser: ...

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, provider: str
    ) -> ProviderError: ...


def bad_response(provider: str, what: str) -> RetryableProviderError:
    """An answer the gateway cannot read: technical, so the next candidate is tried."""
    return RetryableProviderError(f"{provider} returned a response that {what}", code="bad_response")


def load_json(body: bytes, provider: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_response(provider, "is not JSON") from exc


def load_json_object(body: bytes, provider: str) -> dict[str, Any]:
    data = load_json(body, provider)
    if not isinstance(data, dict):
        raise bad_response(provider, "is not a JSON object")
    return data
