"""The fake provider's configuration and per-app state (never module globals)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from services.fake_provider.pieces import split_reply
from services.fake_provider.script import Script, Step

DEFAULT_REPLY = (
    "Hello from the gateway's demo provider. "
    "Your request made it through the queue, a worker and back."
)
DEFAULT_MODELS = ("fake-model",)
MAX_RECORDED_CALLS = 10_000  # a benchmark must not grow the server without bound
_MAX_CACHED_SPLITS = 256


@dataclass(frozen=True, slots=True)
class FakeConfig:
    ttft_ms: int = 0
    chunks: int = 8
    chunk_delay_ms: int = 0
    reply: str = DEFAULT_REPLY
    require_auth: bool = True
    models: tuple[str, ...] = DEFAULT_MODELS


@dataclass(slots=True)
class State:
    config: FakeConfig
    script: Script = field(default_factory=Script)
    calls: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_RECORDED_CALLS))
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    pieces: dict[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)
    base_step: Step = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        self.base_step = Step(
            ttft_ms=config.ttft_ms,
            chunks=config.chunks,
            chunk_delay_ms=config.chunk_delay_ms,
            reply=config.reply,
        )

    def split(self, text: str, count: int) -> tuple[str, ...]:
        """`split_reply`, cached: most requests cut the same reply the same way."""
        key = (text, count)
        pieces = self.pieces.get(key)
        if pieces is None:
            if len(self.pieces) > _MAX_CACHED_SPLITS:  # texts vary; keep the cache small
                self.pieces.clear()
            pieces = self.pieces[key] = split_reply(text, count)
        return pieces


STATE = web.AppKey("fake_provider_state", State)
