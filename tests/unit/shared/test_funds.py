"""The admission, fill and release scripts, on fakeredis (which runs our Lua)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from fakeredis import FakeAsyncRedis

from shared.redis import keys
from shared.redis.funds import AdmitStatus, Funds, HoldRelease, utc_month


@pytest_asyncio.fixture
async def funds() -> AsyncIterator[Funds]:
    redis = FakeAsyncRedis()
    yield Funds(redis)
    await redis.aclose()


async def admit(funds: Funds, rid: str, hold: int, **overrides: Any) -> Any:
    args: dict[str, Any] = dict(
        user_id="u1", rate_subject="key:k1", rate_limit=100, request_id=rid, hold_nusd=hold,
        minimal_fund_nusd=10, hold_expires_ms=10**13, entry=[("m", b"{}"), ("b", b"{}")],
    )  # fmt: skip
    args.update(overrides)
    return await funds.admit(**args)


class TestAdmit:
    async def test_needs_balance_until_filled(self, funds: Funds) -> None:
        assert (await admit(funds, "r1", 5)).status is AdmitStatus.NEED_BALANCE
        assert await funds.redis.xlen(keys.JOBS_STREAM) == 0
        version = await funds.balance_version("u1")
        assert await funds.fill_balance("u1", 1000, version, 60)
        result = await admit(funds, "r1", 5)
        assert result.status is AdmitStatus.OK
        assert result.requests.remaining == 99
        assert await funds.redis.xlen(keys.JOBS_STREAM) == 1
        assert await funds.held_nusd("u1") == 5

    async def test_holds_accumulate_and_refuse_overdraft(self, funds: Funds) -> None:
        await funds.fill_balance("u1", 100, b"0", 60)
        assert (await admit(funds, "r1", 60)).status is AdmitStatus.OK
        refused = await admit(funds, "r2", 60)
        assert refused.status is AdmitStatus.INSUFFICIENT_FUNDS
        assert refused.value == 40
        # Nothing of the refused request remains: no hold, no job, no rate count.
        assert await funds.held_nusd("u1") == 60
        assert await funds.redis.xlen(keys.JOBS_STREAM) == 1
        assert await funds.redis.exists(keys.rate_tat("key:k1")) == 1

    async def test_minimal_fund(self, funds: Funds) -> None:
        await funds.fill_balance("u1", 9, b"0", 60)
        assert (await admit(funds, "r1", 0)).status is AdmitStatus.INSUFFICIENT_FUNDS

    async def test_rate_limit(self, funds: Funds) -> None:
        await funds.fill_balance("u1", 10**9, b"0", 60)
        assert (await admit(funds, "r1", 1, rate_limit=2)).status is AdmitStatus.OK
        assert (await admit(funds, "r2", 1, rate_limit=2)).status is AdmitStatus.OK
        assert (await admit(funds, "r3", 1, rate_limit=2)).status is AdmitStatus.RATE_LIMITED
        assert await funds.held_nusd("u1") == 2
        ttl = await funds.redis.pttl(keys.rate_tat("key:k1"))
        assert 0 < ttl <= 61_000


class TestFillAndRelease:
    async def test_fill_refused_after_a_settlement(self, funds: Funds) -> None:
        seen = await funds.balance_version("u1")
        await funds.invalidate_balance("u1")  # a credit or settlement happened meanwhile
        assert not await funds.fill_balance("u1", 500, seen, 60)
        assert await funds.redis.get(keys.balance("u1")) is None

    async def test_release_applies_debit_once(self, funds: Funds) -> None:
        await funds.fill_balance("u1", 1000, b"0", 60)
        await admit(funds, "r1", 300)
        assert await funds.release_hold(user_id="u1", request_id="r1", debit_nusd=120) == 300
        assert int(await funds.redis.get(keys.balance("u1"))) == 880
        assert await funds.held_nusd("u1") == 0
        # A redelivered settlement changes nothing.
        assert await funds.release_hold(user_id="u1", request_id="r1", debit_nusd=120) == -1
        assert int(await funds.redis.get(keys.balance("u1"))) == 880

    async def test_release_without_cached_balance_bumps_version(self, funds: Funds) -> None:
        await funds.fill_balance("u1", 1000, b"0", 60)
        await admit(funds, "r1", 300)
        await funds.redis.delete(keys.balance("u1"))
        before = await funds.balance_version("u1")
        await funds.release_hold(user_id="u1", request_id="r1", debit_nusd=10)
        assert await funds.balance_version("u1") != before


async def test_a_batch_of_releases_answers_each_in_order_across_script_calls(funds: Funds) -> None:
    """250 releases (three script calls): users with and without a cached balance, keys
    with and without a cached spend counter, holds already gone."""
    month = utc_month()
    for user in ("u1", "u2"):
        await funds.fill_balance(user, 10**6, b"0", 60)
    await funds.redis.set(keys.key_spend("k1", month), 0)  # k1's counter is cached, k2's not
    releases = []
    for i in range(250):
        user = "u1" if i % 2 else "u2"
        placed = await admit(funds, f"r{i}", 100 + i, user_id=user, rate_limit=10**6)
        assert placed.status is AdmitStatus.OK
        releases.append(HoldRelease(user, f"r{i}", 10, ("k1", "k2", None)[i % 3]))
    releases.append(HoldRelease("u1", "never-held", 10, "k1"))
    versions = [await funds.balance_version(u) for u in ("u1", "u2")]

    answers = await funds.release_holds(releases)

    assert answers == [100 + i for i in range(250)] + [-1]
    assert await funds.held_nusd("u1") == await funds.held_nusd("u2") == 0
    assert int(await funds.redis.get(keys.balance("u1"))) == 10**6 - 10 * 125
    assert int(await funds.redis.get(keys.balance("u2"))) == 10**6 - 10 * 125
    assert int(await funds.redis.get(keys.key_spend("k1", month))) == 10 * len(range(0, 250, 3))
    assert await funds.redis.get(keys.key_spend("k2", month)) is None  # refilled when needed
    assert [await funds.balance_version(u) for u in ("u1", "u2")] != versions
    assert await funds.release_holds(releases[:3]) == [-1, -1, -1]  # redelivered: no change
    assert int(await funds.redis.get(keys.balance("u1"))) == 10**6 - 10 * 125
