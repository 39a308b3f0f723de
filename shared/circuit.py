"""Circuit breakers per provider and model, shared by every worker through Redis.

    closed ──(N consecutive technical failures, and mostly failures lately)──► open
    open ──(cooldown passed; one worker wins the probe lock)──► half_open
    half_open ──(probe succeeds)──► closed      half_open ──(probe fails)──► open

Transitions are Lua scripts, so concurrent workers agree. Reading is cheap: each worker
keeps a snapshot of every circuit it cares about, refreshed in the background, and only
talks to Redis on the hot path when its snapshot says a circuit is not closed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from shared.redis import keys
from shared.redis.scripts import LuaScript

if TYPE_CHECKING:
    from redis.asyncio import Redis



class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    failure_threshold: int = 5
    cooldown_ms: int = 30_000
    probe_lock_ms: int = 60_000
    # Opening also needs this share of failures among the provider's recent samples.
    recent_samples: int = 20
    failure_share: float = 0.5


@dataclass(frozen=True, slots=True)
class CircuitView:
    state: CircuitState
    failures: int
    opened_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state.value, "failures": self.failures, "opened_ms": self.opened_ms}


CLOSED = CircuitView(CircuitState.CLOSED, 0, None)


def _view(raw: dict[bytes, bytes]) -> CircuitView:
    if not raw:
        return CLOSED
    state = raw.get(b"state", b"closed").decode()
    opened = raw.get(b"opened_ms")
    return CircuitView(
        state=CircuitState(state) if state in CircuitState._value2member_map_ else CircuitState.CLOSED,
        failures=int(raw.get(b"failures", b"0")),
        opened_ms=int(opened) if opened else None,
    )


class Circuits:
    def __init__(self, redis: Redis, policy: CircuitPolicy | None = None) -> None:
        self.redis = redis
        self.policy = policy or CircuitPolicy()
        self._failure = LuaScript.named(redis, "circuit_failure")
        self._success = LuaScript.named(redis, "circuit_success")
        self._acquire = LuaScript.named(redis, "circuit_acquire")
        self.snapshot: dict[tuple[str, str], CircuitView] = {}

    def _keys(self, provider: str, model: str) -> list[str]:
        return [keys.circuit(provider, model), keys.circuit_probe(provider, model)]

    async def read(self, targets: Sequence[tuple[str, str]]) -> dict[tuple[str, str], CircuitView]:
        if not targets:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for provider, model in targets:
                pipe.hgetall(keys.circuit(provider, model))
            raws = await pipe.execute()
        return {t: _view(raw) for t, raw in zip(targets, raws, strict=True)}

    async def refresh(self, targets: Iterable[tuple[str, str]]) -> None:
        self.snapshot = await self.read(list(targets))

    def looks_closed(self, provider: str, model: str) -> bool:
        view = self.snapshot.get((provider, model), CLOSED)
        return view.state is CircuitState.CLOSED

    def probe_due(self, provider: str, model: str, now_ms: int | None = None) -> bool:
        """Open and cooled down (or half-open): the next request should be the probe."""
        view = self.snapshot.get((provider, model), CLOSED)
        if view.state is CircuitState.HALF_OPEN:
            return True
        if view.state is not CircuitState.OPEN or view.opened_ms is None:
            return False
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        return now - view.opened_ms >= self.policy.cooldown_ms

    async def allow(self, provider: str, model: str) -> bool:
        """May we call this target now? Free when the snapshot says closed."""
        if self.looks_closed(provider, model):
            return True
        now = int(time.time() * 1000)
        allowed = await self._acquire(
            keys=self._keys(provider, model),
            args=[now, self.policy.cooldown_ms, self.policy.probe_lock_ms],
        )
        return bool(allowed)

    async def record_failure(self, provider: str, model: str) -> bool:
        """Returns True when this failure opened the circuit."""
        now = int(time.time() * 1000)
        opened = await self._failure(
            keys=[*self._keys(provider, model), keys.provider_stats(provider, model)],
            args=[
                self.policy.failure_threshold,
                now,
                self.policy.recent_samples,
                self.policy.failure_share,
            ],
        )
        if opened:
            self.snapshot[(provider, model)] = CircuitView(CircuitState.OPEN, 0, now)
        else:
            # Remember the failure locally, so the next success resets the count in Redis
            # instead of assuming (from a stale snapshot) there is nothing to reset.
            view = self.snapshot.get((provider, model), CLOSED)
            self.snapshot[(provider, model)] = CircuitView(view.state, view.failures + 1, view.opened_ms)
        return bool(opened)

    async def record_success(self, provider: str, model: str) -> bool:
        """Returns True when this success closed a circuit. Free when nothing needs resetting."""
        view = self.snapshot.get((provider, model), CLOSED)
        if view.state is CircuitState.CLOSED and view.failures == 0:
            return False
        closed = await self._success(keys=self._keys(provider, model), args=[])
        self.snapshot[(provider, model)] = CLOSED
        return bool(closed)
