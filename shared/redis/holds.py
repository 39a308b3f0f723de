"""Holds that settlement will never release: expired ones, and those of requests
already settled whose release step was lost (a crash between commit and release).

Admission writes each hold as `gw:holds:{user}` field request id -> "amount:expires_ms"
and adds it to `gw:held:{user}`; settlement removes it (`Funds.release_hold`). What this
module removes goes through one Lua script per user (`lua/drop_holds.lua`), which also
recomputes `gw:held:{user}` from the holds that remain, so a drifted total is repaired
on the way, and invalidates the cached balance whenever it removed anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.redis import keys
from shared.redis.scripts import LuaScript

if TYPE_CHECKING:
    from redis.asyncio import Redis

_SCRIPT = Path(__file__).with_name("lua") / "drop_holds.lua"
_HOLDS_PREFIX = keys.holds("")


@dataclass(frozen=True, slots=True)
class Hold:
    request_id: str
    amount_nusd: int
    expires_ms: int


@dataclass(frozen=True, slots=True)
class Dropped:
    """What one script call removed, and the user's held total afterwards."""

    request_ids: tuple[str, ...]
    held_nusd: int


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_hold(request_id: str, raw: str) -> Hold:
    amount, _, rest = raw.partition(":")
    expires = rest.split(":", 1)[0]
    return Hold(request_id, int(amount), int(expires) if expires else 0)


class HoldStore:
    """Reads and removes holds; the script is registered once per Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._drop = LuaScript(redis, _SCRIPT.read_text())

    async def users_with_holds(self) -> AsyncIterator[str]:
        """Every user that has a holds hash (SCAN: never blocks Redis)."""
        async for key in self.redis.scan_iter(match=keys.holds("*"), count=500):
            yield _text(key).removeprefix(_HOLDS_PREFIX)

    async def holds(self, user_id: str) -> list[Hold]:
        raw: dict[Any, Any] = await self.redis.hgetall(keys.holds(user_id))  # type: ignore[misc]
        return [parse_hold(_text(rid), _text(value)) for rid, value in raw.items()]

    async def held_total(self, user_id: str) -> int:
        return int(await self.redis.get(keys.held_total(user_id)) or 0)

    async def expire(self, user_id: str, now_ms: int) -> Dropped:
        """Remove the user's holds whose expiry is before `now_ms`; fix the held total."""
        return await self._run(user_id, ["expired", now_ms])

    async def release(self, user_id: str, request_ids: Iterable[str]) -> Dropped:
        """Remove these requests' holds (their settlement is done); fix the held total."""
        return await self._run(user_id, ["ids", *request_ids])

    async def _run(self, user_id: str, args: list[Any]) -> Dropped:
        raw: list[Any] = await self._drop(
            keys=[
                keys.holds(user_id),
                keys.held_total(user_id),
                keys.balance(user_id),
                keys.balance_version(user_id),
            ],
            args=args,
        )
        *removed, total = (_text(item) for item in raw)
        return Dropped(tuple(removed), int(total))
