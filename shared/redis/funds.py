"""Admission, balance cache and fund holds in Redis, each one atomic Lua script.

The database ledger is the truth. Redis holds a cached copy of each wallet's settled
balance (`gw:bal:{user}`, with a TTL) and the holds of requests in flight. Admission
compares `cached balance - held` with the request's maximum estimated cost and, in the
same script, counts the rate limit, records the hold and enqueues the job. Settlement
removes the hold and applies the real debit to the cached balance; a version counter
keeps a slow cache fill from writing back a balance read before a settlement.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.redis import keys

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

_LUA = Path(__file__).with_name("lua")


def _source(name: str) -> str:
    return (_LUA / f"{name}.lua").read_text()


class AdmitStatus(StrEnum):
    OK = "ok"
    RATE_LIMITED = "rl"
    NEED_BALANCE = "nobal"
    INSUFFICIENT_FUNDS = "funds"


@dataclass(frozen=True, slots=True)
class AdmitResult:
    status: AdmitStatus
    # Remaining requests in the window when OK; available nUSD when INSUFFICIENT_FUNDS.
    value: int


class Funds:
    """The scripts, registered once per Redis client (EVALSHA with automatic reload)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._admit: AsyncScript = redis.register_script(_source("admit"))
        self._fill: AsyncScript = redis.register_script(_source("fill_balance"))
        self._release: AsyncScript = redis.register_script(_source("release_hold"))

    async def admit(
        self,
        *,
        user_id: str,
        rate_subject: str,
        rate_window: int,
        rate_limit: int,
        rate_window_ttl_ms: int,
        request_id: str,
        hold_nusd: int,
        minimal_fund_nusd: int,
        hold_expires_ms: int,
        job_meta: bytes,
        job_body: bytes,
    ) -> AdmitResult:
        raw: Any = await self._admit(
            keys=[
                keys.rate_limit(rate_subject, rate_window),
                keys.balance(user_id),
                keys.held_total(user_id),
                keys.holds(user_id),
                keys.JOBS_STREAM,
            ],
            args=[
                rate_limit,
                rate_window_ttl_ms,
                hold_nusd,
                minimal_fund_nusd,
                request_id,
                hold_expires_ms,
                job_meta,
                job_body,
                keys.JOBS_STREAM_MAXLEN,
            ],
        )
        status = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
        return AdmitResult(AdmitStatus(status), int(raw[1]))

    async def balance_version(self, user_id: str) -> bytes:
        value = await self.redis.get(keys.balance_version(user_id))
        return value if value is not None else b"0"

    async def fill_balance(
        self, user_id: str, balance_nusd: int, version: bytes, ttl_s: int
    ) -> bool:
        filled = await self._fill(
            keys=[keys.balance(user_id), keys.balance_version(user_id)],
            args=[balance_nusd, version, max(ttl_s, 1)],
        )
        return bool(filled)

    async def release_hold(self, *, user_id: str, request_id: str, debit_nusd: int) -> int:
        """Drop a request's hold and apply its debit to the cached balance, once.

        Returns the amount that was held, or -1 if the hold was already gone.
        """
        released = await self._release(
            keys=[
                keys.holds(user_id),
                keys.held_total(user_id),
                keys.balance(user_id),
                keys.balance_version(user_id),
            ],
            args=[request_id, debit_nusd],
        )
        return int(released)

    async def invalidate_balance(self, user_id: str) -> None:
        """After a credit or adjustment: drop the cached balance so the next read is fresh."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(keys.balance_version(user_id))
            pipe.delete(keys.balance(user_id))
            await pipe.execute()

    async def held_nusd(self, user_id: str) -> int:
        value = await self.redis.get(keys.held_total(user_id))
        return int(value or 0)
