"""Admission, balance cache and fund holds in Redis, each one atomic Lua script.

The database ledger is the truth. Redis holds a cached copy of each wallet's settled
balance (`gw:bal:{user}`, with a TTL) and the holds of requests in flight. Admission
compares `cached balance - held` with the request's maximum estimated cost and, in the
same script, counts the rate limit, records the hold and enqueues the job. Settlement
removes the hold and applies the real debit to the cached balance; a version counter
keeps a slow cache fill from writing back a balance read before a settlement.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from shared.redis import keys
from shared.redis.scripts import LuaScript

if TYPE_CHECKING:
    from redis.asyncio import Redis



class AdmitStatus(StrEnum):
    OK = "ok"
    RATE_LIMITED = "rl"
    TOKEN_RATE_LIMITED = "tpm"
    NEED_BALANCE = "nobal"
    NEED_KEY_SPEND = "nospend"
    INSUFFICIENT_FUNDS = "funds"
    SPEND_LIMIT = "spend"


@dataclass(frozen=True, slots=True)
class RateState:
    """Where a subject stands against one limit (requests or tokens per minute)."""

    remaining: int = 0
    # Until the allowance is whole again, and (when refused) until the request would fit.
    reset_us: int = 0
    retry_us: int = 0


@dataclass(frozen=True, slots=True)
class AdmitResult:
    status: AdmitStatus
    # Available nUSD when INSUFFICIENT_FUNDS; nUSD left under the key's cap when SPEND_LIMIT.
    value: int
    requests: RateState = RateState()
    tokens: RateState = RateState()


def utc_month(now: datetime | None = None) -> str:
    """The calendar month (UTC) that spend counters are kept by, as YYYYMM."""
    if now is not None:
        return f"{now:%Y%m}"
    # Per request, a datetime and a format showed in profiles; gmtime is enough.
    t = time.gmtime()
    return f"{t.tm_year:04d}{t.tm_mon:02d}"


@dataclass(frozen=True, slots=True)
class HoldRelease:
    user_id: str
    request_id: str
    debit_nusd: int
    key_id: str | None = None


# Requests per release script call: a batch of 500 is five calls in one round trip, so
# that no single script keeps Redis from other clients for long.
RELEASES_PER_CALL = 100


def _release_call(releases: Sequence[HoldRelease], month: str) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one `release_holds.lua` call."""
    call_keys: list[str] = []
    call_args: list[Any] = []
    for r in releases:
        call_keys += (
            keys.holds(r.user_id),
            keys.held_total(r.user_id),
            keys.balance(r.user_id),
            keys.balance_version(r.user_id),
        )
        if r.key_id:
            call_keys.append(keys.key_spend(r.key_id, month))
        call_args += (r.request_id, r.debit_nusd, 1 if r.key_id else 0)
    return call_keys, call_args


class Funds:
    """The scripts, registered once per Redis client (EVALSHA with automatic reload)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._admit = LuaScript.named(redis, "admit")
        self._fill = LuaScript.named(redis, "fill_balance")
        self._release = LuaScript.named(redis, "release_holds")
        self._fill_spend = LuaScript.named(redis, "fill_key_spend")
        self._peek = LuaScript.named(redis, "rate_peek")

    async def admit(
        self,
        *,
        user_id: str,
        rate_subject: str,
        rate_limit: int,
        request_id: str,
        hold_nusd: int,
        minimal_fund_nusd: int,
        hold_expires_ms: int,
        entry: Sequence[tuple[str, bytes]],
        stream: str = keys.JOBS_STREAM,
        stream_maxlen: int = keys.JOBS_STREAM_MAXLEN,
        token_limit: int = 0,
        token_cost: int = 0,
        key_id: str | None = None,
        spend_limit_nusd: int | None = None,
        month: str | None = None,
    ) -> AdmitResult:
        """Check everything and, if all passes, take the rate allowance, hold the funds
        and append `entry` to `stream`, atomically.

        :param rate_subject: whose allowance (`key:<id>` or `user:<id>`).
        :param rate_limit: requests per minute (at least 1).
        :param entry: the stream entry's field/value pairs (a job, or a cache-hit event).
        :param token_limit: tokens per minute, 0 for no token limit.
        :param token_cost: this request's estimated tokens (prompt + most output).
        :param spend_limit_nusd: the key's monthly cap; `key_id` must be given with it.
        """
        if rate_limit < 1:
            raise ValueError("rate_limit must be at least 1 request per minute")
        capped = spend_limit_nusd is not None and key_id is not None
        spend_key = keys.key_spend(key_id or "-", month or utc_month())
        args: list[Any] = [
            rate_limit,
            max(token_limit, 0),
            max(token_cost, 1),
            spend_limit_nusd if capped else -1,
            hold_nusd,
            minimal_fund_nusd,
            request_id,
            hold_expires_ms,
            stream_maxlen,
        ]
        for name, value in entry:
            args.extend((name, value))
        raw: Any = await self._admit(
            keys=[
                keys.rate_tat(rate_subject),
                keys.balance(user_id),
                keys.held_total(user_id),
                keys.holds(user_id),
                stream,
                keys.token_rate_tat(rate_subject),
                spend_key,
            ],
            args=args,
        )
        status = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
        values = [int(v) for v in raw[1:]]
        return AdmitResult(
            AdmitStatus(status),
            values[0],
            RateState(values[1], values[2], values[3]),
            RateState(values[4], values[5], values[6]),
        )

    async def peek_rate(
        self, rate_subject: str, rate_limit: int, token_limit: int = 0
    ) -> tuple[RateState, RateState]:
        """Where a subject stands (requests, tokens), without taking anything."""
        raw: Any = await self._peek(
            keys=[keys.rate_tat(rate_subject), keys.token_rate_tat(rate_subject)],
            args=[max(rate_limit, 1), max(token_limit, 0)],
        )
        values = [int(v) for v in raw]
        return RateState(values[0], values[1]), RateState(values[2], values[3])

    async def fill_key_spend(
        self, user_id: str, key_id: str, month: str, spent_nusd: int, version: bytes, ttl_s: int
    ) -> bool:
        """Cache a key's spend this month as read from the database, unless a settlement
        of its owner happened since `version` was read (see `balance_version`)."""
        filled = await self._fill_spend(
            keys=[keys.key_spend(key_id, month), keys.balance_version(user_id)],
            args=[spent_nusd, version, max(ttl_s, 1)],
        )
        return bool(filled)

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

    async def release_hold(
        self, *, user_id: str, request_id: str, debit_nusd: int, key_id: str | None = None
    ) -> int:
        """Drop a request's hold and apply its debit to the cached balance, once.

        With `key_id`, the debit is also added to that key's spend counter for this month
        (when the counter is cached; a missing one is refilled from the database).
        Returns the amount that was held, or -1 if the hold was already gone.
        """
        release = HoldRelease(user_id, request_id, debit_nusd, key_id)
        return (await self.release_holds([release]))[0]

    async def release_holds(self, releases: Sequence[HoldRelease]) -> list[int]:
        """`release_hold` for many requests in one pipelined round trip (billing's batches),
        a script call per `RELEASES_PER_CALL` of them. Answers in the same order."""
        if not releases:
            return []
        month = utc_month()
        calls = [
            _release_call(releases[start : start + RELEASES_PER_CALL], month)
            for start in range(0, len(releases), RELEASES_PER_CALL)
        ]
        return [int(held) for answer in await self._release.run_many(calls) for held in answer]

    async def invalidate_balance(self, user_id: str) -> None:
        """After a credit or adjustment: drop the cached balance so the next read is fresh."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(keys.balance_version(user_id))
            pipe.delete(keys.balance(user_id))
            await pipe.execute()

    async def held_nusd(self, user_id: str) -> int:
        value = await self.redis.get(keys.held_total(user_id))
        return int(value or 0)
