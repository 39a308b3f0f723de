"""Rate limits (GCRA), token limits and key spend caps in the admission script.

Run on real Redis (TEST_REDIS_URL) because the script reads Redis's clock (TIME), and
a burst must be judged by the same clock every api replica would use.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from shared.redis import keys
from shared.redis.funds import AdmitStatus, Funds, utc_month

ENTRY = [("m", b"{}"), ("b", b"{}")]


async def admit(funds: Funds, rid: str, **overrides: Any) -> Any:
    args: dict[str, Any] = {
        "user_id": "u1", "rate_subject": "key:k1", "rate_limit": 10, "request_id": rid,
        "hold_nusd": 1, "minimal_fund_nusd": 0, "hold_expires_ms": 10**13, "entry": ENTRY,
    }  # fmt: skip
    args.update(overrides)
    return await funds.admit(**args)


@pytest.fixture
async def funds(redis: Redis) -> Funds:
    f = Funds(redis)
    await f.fill_balance("u1", 10**12, b"0", 60)
    return f


class TestRequestRate:
    async def test_burst_gets_exactly_the_allowance_and_remaining_decreases(
        self, funds: Funds
    ) -> None:
        results = [await admit(funds, f"r{i}") for i in range(15)]
        statuses = [r.status for r in results]
        assert statuses == [AdmitStatus.OK] * 10 + [AdmitStatus.RATE_LIMITED] * 5
        assert [r.requests.remaining for r in results[:10]] == list(range(9, -1, -1))
        refused = results[10]
        # One request's worth refills every 6 s: that is how long to wait.
        assert 5_000_000 < refused.requests.retry_us <= 6_000_000
        assert await funds.redis.xlen(keys.JOBS_STREAM) == 10
        assert await funds.held_nusd("u1") == 10

    async def test_no_double_allowance_at_a_window_edge(self, funds: Funds) -> None:
        # A fixed window would let 10 through at 0:59 and 10 more at 1:00. GCRA lets the
        # second burst have only what refilled meanwhile.
        for i in range(10):
            assert (await admit(funds, f"a{i}")).status is AdmitStatus.OK
        tat = int(await funds.redis.get(keys.rate_tat("key:k1")))
        # Pretend 6 s passed since the burst: exactly one request's worth has refilled.
        await funds.redis.set(keys.rate_tat("key:k1"), tat - 6_000_000, px=60_000)
        second = [await admit(funds, f"b{i}") for i in range(10)]
        assert [r.status for r in second].count(AdmitStatus.OK) == 1

    async def test_concurrent_burst_is_atomic(self, funds: Funds) -> None:
        results = await asyncio.gather(*(admit(funds, f"c{i}", rate_limit=25) for i in range(60)))
        assert sum(r.status is AdmitStatus.OK for r in results) == 25

    async def test_subjects_are_independent(self, funds: Funds) -> None:
        for i in range(3):
            await admit(funds, f"x{i}", rate_limit=3)
        assert (await admit(funds, "x3", rate_limit=3)).status is AdmitStatus.RATE_LIMITED
        other = await admit(funds, "y0", rate_limit=3, rate_subject="key:k2")
        assert other.status is AdmitStatus.OK and other.requests.remaining == 2

    async def test_refused_for_funds_takes_no_allowance(self, funds: Funds) -> None:
        await admit(funds, "r0")
        broke = await admit(funds, "r1", hold_nusd=10**13)
        assert broke.status is AdmitStatus.INSUFFICIENT_FUNDS
        assert broke.requests.remaining == 9  # what is left, untouched
        assert (await admit(funds, "r2")).requests.remaining == 8

    async def test_peek_takes_nothing(self, funds: Funds) -> None:
        await admit(funds, "r0")
        requests, _tokens = await funds.peek_rate("key:k1", 10)
        assert requests.remaining == 9
        assert (await funds.peek_rate("key:k1", 10))[0].remaining == 9


class TestTokenRate:
    async def test_tokens_per_minute(self, funds: Funds) -> None:
        first = await admit(funds, "t0", token_limit=1000, token_cost=600)
        assert first.status is AdmitStatus.OK and first.tokens.remaining == 400
        second = await admit(funds, "t1", token_limit=1000, token_cost=600)
        assert second.status is AdmitStatus.TOKEN_RATE_LIMITED
        assert second.tokens.retry_us > 0
        # The refused request took no request allowance either.
        assert second.requests.remaining == 9
        assert (await admit(funds, "t2", token_limit=1000, token_cost=400)).status is AdmitStatus.OK

    async def test_a_request_larger_than_the_limit_needs_the_whole_allowance(
        self, funds: Funds
    ) -> None:
        assert (await admit(funds, "t0", token_limit=100, token_cost=10_000)).status is AdmitStatus.OK
        assert (await admit(funds, "t1", token_limit=100, token_cost=1)).status is (
            AdmitStatus.TOKEN_RATE_LIMITED
        )


class TestKeySpend:
    async def test_needs_the_counter_then_caps(self, funds: Funds) -> None:
        cap: dict[str, Any] = {"key_id": "k1", "spend_limit_nusd": 100, "month": "202501"}
        assert (await admit(funds, "s0", hold_nusd=30, **cap)).status is AdmitStatus.NEED_KEY_SPEND
        version = await funds.balance_version("u1")
        assert await funds.fill_key_spend("u1", "k1", "202501", 50, version, 60)
        assert (await admit(funds, "s1", hold_nusd=30, **cap)).status is AdmitStatus.OK
        refused = await admit(funds, "s2", hold_nusd=60, **cap)
        assert refused.status is AdmitStatus.SPEND_LIMIT and refused.value == 50

    async def test_settlement_adds_to_a_cached_counter_once(self, funds: Funds) -> None:
        month = utc_month()
        await funds.fill_key_spend("u1", "k1", month, 7, await funds.balance_version("u1"), 60)
        await admit(funds, "s0", hold_nusd=30)
        for _ in range(2):  # a redelivered settlement counts once
            await funds.release_hold(user_id="u1", request_id="s0", debit_nusd=25, key_id="k1")
        assert int(await funds.redis.get(keys.key_spend("k1", month))) == 32

    async def test_settlement_leaves_a_missing_counter_missing(self, funds: Funds) -> None:
        # Creating it at 25 would undercount: the next admission refills it from the database.
        await admit(funds, "s0", hold_nusd=30)
        await funds.release_hold(user_id="u1", request_id="s0", debit_nusd=25, key_id="k1")
        assert await funds.redis.exists(keys.key_spend("k1", utc_month())) == 0

    async def test_fill_refused_after_a_settlement(self, funds: Funds) -> None:
        seen = await funds.balance_version("u1")
        await admit(funds, "s0", hold_nusd=30)
        await funds.release_hold(user_id="u1", request_id="s0", debit_nusd=25, key_id="k1")
        assert not await funds.fill_key_spend("u1", "k1", "202501", 0, seen, 60)
