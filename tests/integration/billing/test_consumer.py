"""BillingConsumer on real Redis and PostgreSQL: exactly once through crashes and outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing import consumer as consumer_module
from services.billing.consumer import DEAD_LETTER_STREAM, Backoff, BillingConsumer
from shared.db.models import LedgerTransaction, UsageRecord
from shared.db.repositories import ledger
from shared.messages import CompletionEvent
from shared.redis import keys
from shared.redis.funds import Funds
from tests.integration.billing.events import (
    completion_event,
    funded_user,
    holds_left,
    place_hold,
    publish,
)

STREAM, GROUP = keys.EVENTS_STREAM, keys.EVENTS_GROUP


def make_consumer(
    redis: Redis, sessions: Any, name: str = "billing-test", **options: Any
) -> BillingConsumer:
    options.setdefault("block_ms", 50)
    options.setdefault("backoff_initial_s", 0.01)
    options.setdefault("backoff_max_s", 0.05)
    return BillingConsumer(redis, sessions, Funds(redis), consumer_name=name, **options)


async def _published(redis: Redis, user_id: str, n: int, cost: int = 1000) -> list[CompletionEvent]:
    events = [completion_event(user_id, cost_nusd=cost + i) for i in range(n)]
    for event in events:
        await place_hold(redis, event)
        await publish(redis, event)
    return events


async def _counts(sessions: async_sessionmaker[AsyncSession], user_id: str) -> tuple[int, int]:
    async with sessions() as s:
        usage_rows = await s.scalar(
            select(func.count()).select_from(UsageRecord).where(UsageRecord.user_id == user_id)
        )
        debits = await s.scalar(
            select(func.count()).where(
                LedgerTransaction.user_id == user_id, LedgerTransaction.kind == "debit"
            )
        )
    return int(usage_rows or 0), int(debits or 0)


async def _balance(sessions: async_sessionmaker[AsyncSession], user_id: str) -> int:
    async with sessions() as s:
        balance = await ledger.get_balance(s, user_id)
        assert balance == await ledger.ledger_sum(s, user_id)
        return int(balance or 0)


async def _pending(redis: Redis, consumer_name: str | None = None) -> int:
    if consumer_name is None:
        return int((await redis.xpending(STREAM, GROUP))["pending"])
    rows = await redis.xpending_range(STREAM, GROUP, "-", "+", 1000, consumername=consumer_name)
    return len(rows)


async def _wait_for(predicate: Callable[[], Any], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_drain_settles_every_event_and_releases_holds(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user_id = await funded_user(sessions, 10**9)
    consumer = make_consumer(redis, sessions)
    await consumer.ensure_group()
    await consumer.ensure_group()  # BUSYGROUP is fine
    events = await _published(redis, user_id, 20)
    await redis.set(keys.balance(user_id), 10**9)  # a cached balance, as the api keeps it

    assert await consumer.drain_once() == 20

    assert await _counts(sessions, user_id) == (20, 20)
    total = sum(e.cost_nusd for e in events)
    assert await _balance(sessions, user_id) == 10**9 - total
    assert await holds_left(redis, user_id) == 0
    assert int(await redis.get(keys.held_total(user_id)) or 0) == 0
    assert int(await redis.get(keys.balance(user_id))) == 10**9 - total
    assert await _pending(redis) == 0


async def test_redelivered_events_settle_nothing_twice(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user_id = await funded_user(sessions, 10**9)
    consumer = make_consumer(redis, sessions)
    events = await _published(redis, user_id, 5)
    assert await consumer.drain_once() == 5
    balance = await _balance(sessions, user_id)

    for event in events:  # the worker retried its XADD, say
        await publish(redis, event)
    assert await consumer.drain_once() == 5

    assert await _counts(sessions, user_id) == (5, 5)
    assert await _balance(sessions, user_id) == balance
    assert await _pending(redis) == 0


async def test_restart_reprocesses_own_pending_entries(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user_id = await funded_user(sessions, 10**9)
    crashed = make_consumer(redis, sessions, name="billing-host-a")
    await crashed.ensure_group()
    await _published(redis, user_id, 4)
    # The crashed process had read the entries and died before settling them.
    await redis.xreadgroup(GROUP, "billing-host-a", {STREAM: ">"}, count=10)
    assert await _pending(redis, "billing-host-a") == 4

    restarted = make_consumer(redis, sessions, name="billing-host-a", block_ms=20)
    stop = asyncio.Event()
    task = asyncio.create_task(restarted.run(stop))

    async def settled() -> bool:
        return await _counts(sessions, user_id) == (4, 4)

    try:
        await _wait_for(settled)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    assert await _pending(redis) == 0
    assert await holds_left(redis, user_id) == 0


async def test_claims_entries_of_a_dead_consumer(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user_id = await funded_user(sessions, 10**9)
    await make_consumer(redis, sessions).ensure_group()
    await _published(redis, user_id, 3)
    await redis.xreadgroup(GROUP, "billing-dead", {STREAM: ">"}, count=10)

    patient = make_consumer(redis, sessions, name="billing-patient", claim_idle_ms=60_000)
    assert await patient.drain_once() == 0  # not idle long enough yet
    assert await _pending(redis, "billing-dead") == 3

    await asyncio.sleep(0.03)
    eager = make_consumer(redis, sessions, name="billing-alive", claim_idle_ms=20)
    assert await eager.drain_once() == 3
    assert await _counts(sessions, user_id) == (3, 3)
    assert await _pending(redis) == 0


async def test_undecodable_entries_go_to_dead_letter(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user_id = await funded_user(sessions, 10**9)
    consumer = make_consumer(redis, sessions)
    await consumer.ensure_group()
    await redis.xadd(STREAM, {"e": b"{not json"})
    await redis.xadd(STREAM, {"something": b"else"})
    await redis.xadd(STREAM, {"e": b'{"v": 99}'})
    good = (await _published(redis, user_id, 1))[0]

    assert await consumer.drain_once() == 4

    assert await _pending(redis) == 0
    dead = await redis.xrange(DEAD_LETTER_STREAM)
    assert len(dead) == 3
    assert dead[0][1][b"e"] == b"{not json"
    assert all(b"dead_error" in fields and b"dead_source_id" in fields for _, fields in dead)
    assert await _counts(sessions, user_id) == (1, 1)
    async with sessions() as s:
        assert await ledger.get_balance(s, user_id) == 10**9 - good.cost_nusd


async def test_unknown_user_is_acked_and_its_hold_released(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    consumer = make_consumer(redis, sessions)
    event = completion_event("usr_deleted")
    await place_hold(redis, event)
    await publish(redis, event)
    assert await consumer.drain_once() == 1
    assert await _pending(redis) == 0
    assert await holds_left(redis, "usr_deleted") == 0


class FlakySessions:
    """A session factory whose first `failures` transactions cannot reach the database."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], redis: Redis, failures: int
    ) -> None:
        self.sessions = sessions
        self.redis = redis
        self.failures = failures
        self.pending_seen: list[int] = []

    @asynccontextmanager
    async def _failing(self) -> AsyncIterator[AsyncSession]:
        self.pending_seen.append(await _pending(self.redis))
        raise OperationalError("BEGIN", {}, ConnectionRefusedError("connection refused"))
        yield  # pragma: no cover

    def begin(self) -> Any:
        if self.failures > 0:
            self.failures -= 1
            return self._failing()
        return self.sessions.begin()


async def test_database_outage_loses_nothing(
    redis: Redis, sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    user_id = await funded_user(sessions, 10**9)
    flaky = FlakySessions(sessions, redis, failures=3)
    consumer = make_consumer(redis, flaky)
    await consumer.ensure_group()
    events = await _published(redis, user_id, 6)

    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        # A fresh logger, so the capture works whatever logging other tests configured.
        monkeypatch.setattr(consumer_module, "log", structlog.get_logger("billing"))
        task = asyncio.create_task(consumer.run(stop))

        async def settled() -> bool:
            return await _counts(sessions, user_id) == (6, 6)

        try:
            await _wait_for(settled)
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=5)

    # While the database was away the entries stayed pending (read, not acked).
    assert flaky.pending_seen == [6, 6, 6]
    assert await _pending(redis) == 0
    assert await _balance(sessions, user_id) == 10**9 - sum(e.cost_nusd for e in events)
    assert await holds_left(redis, user_id) == 0
    names = [entry["event"] for entry in logs]
    assert names.count("billing_db_unavailable") == 3
    assert names.count("event_settled") == 6
    settled_log = next(entry for entry in logs if entry["event"] == "event_settled")
    assert settled_log["request_id"] == events[0].request_id
    assert settled_log["cost_nusd"] == events[0].cost_nusd
    assert settled_log["provider"] == "openai"


async def test_stop_ends_a_blocked_read(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    consumer = make_consumer(redis, sessions, block_ms=200)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, timeout=2)


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    top = Backoff(0.5, 10.0, rng=lambda: 1.0)
    assert [top.next_delay_s() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    bottom = Backoff(0.5, 10.0, rng=lambda: 0.0)
    assert [bottom.next_delay_s() for _ in range(3)] == [0.25, 0.5, 1.0]
    top.reset()
    assert top.next_delay_s() == 0.5


async def test_run_billing_builds_everything_from_settings(
    redis: Redis, redis_url: str, pg_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    from services.billing.main import run_billing
    from shared.settings import Settings

    user_id = await funded_user(sessions, 10**9)
    await _published(redis, user_id, 3)
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_billing(Settings(database_url=pg_url), redis_url, stop, consumer_name="billing-main")
    )

    async def settled() -> bool:
        return await _counts(sessions, user_id) == (3, 3)

    try:
        await _wait_for(settled)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    assert await _pending(redis) == 0


async def test_recreates_a_lost_group(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user_id = await funded_user(sessions, 10**9)
    consumer = make_consumer(redis, sessions, block_ms=20)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await asyncio.sleep(0.05)
        await redis.delete(STREAM)  # Redis lost its data, say
        await asyncio.sleep(0.05)
        await _published(redis, user_id, 2)

        async def settled() -> bool:
            return await _counts(sessions, user_id) == (2, 2)

        await _wait_for(settled)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
