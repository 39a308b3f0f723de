"""Reconciliation and stale holds on real Redis and PostgreSQL: a clean run finds
nothing; planted inconsistencies are each found, and the holds repaired."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.consumer import BillingConsumer
from services.billing.jobs import (
    ARQ_QUEUE,
    JobDeps,
    create_arq_pool,
    create_arq_worker,
    reconcile_job,
    stop_arq_worker,
)
from services.billing.reconcile import reconcile
from services.billing.stale_holds import expire_stale_holds
from shared.db.models import Wallet
from shared.db.repositories import ledger, usage
from shared.redis import keys
from shared.redis.funds import Funds
from shared.redis.holds import HoldStore
from shared.settings import Settings
from tests.integration.billing.events import completion_event, funded_user, place_hold, publish


async def _settled_world(redis: Redis, sessions: async_sessionmaker[AsyncSession]) -> str:
    """A user with a few requests settled normally, and one still in flight."""
    user_id = await funded_user(sessions, 10**9)
    for i in range(4):
        event = completion_event(user_id, cost_nusd=1000 + i)
        await place_hold(redis, event)
        await publish(redis, event)
    consumer = BillingConsumer(redis, sessions, Funds(redis), consumer_name="rec", block_ms=20)
    assert await consumer.drain_once() == 4
    await place_hold(redis, completion_event(user_id))  # in flight: not yet expired
    return user_id


async def test_clean_run_reports_nothing(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await _settled_world(redis, sessions)
    report = await reconcile(sessions, redis)
    assert report.wallets_checked == 1
    assert report.problems == 0 and report.repairs == 0, report.to_dict()
    assert report.stuck_but_settled == 0


async def test_finds_each_planted_inconsistency(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user_id = await _settled_world(redis, sessions)
    now_ms = int(time.time() * 1000)

    # 1. A wallet balance edited by hand.
    async with sessions.begin() as s:
        await s.execute(
            update(Wallet)
            .where(Wallet.user_id == user_id)
            .values(balance_nusd=Wallet.balance_nusd + 7)
        )
    # 2. A hold whose request was settled (its release got lost), and an expired one.
    settled = completion_event(user_id, cost_nusd=900)
    async with sessions.begin() as s:
        await usage.record_usage(s, settled)
        await ledger.debit(s, user_id, 900, request_id=settled.request_id, reason="t")
    await place_hold(redis, settled)
    expired = completion_event(user_id, hold_nusd=4242)
    await redis.hset(keys.holds(user_id), expired.request_id, f"4242:{now_ms - 1000}")  # type: ignore[misc]
    await redis.incrby(keys.held_total(user_id), 4242 + 5)  # and a held total that drifted by 5
    # 3. A completion event published and never settled (billing reads nothing more).
    lost = completion_event(user_id)
    await publish(redis, lost)
    # 4. A usage row with a cost and no debit; a debit with no usage row.
    unpaid = completion_event(user_id, cost_nusd=5000)
    async with sessions.begin() as s:
        await usage.record_usage(s, unpaid)
        await ledger.debit(s, user_id, 777, request_id="req_orphan_debit", reason="hand-made")
    # The debit above moved the balance with its ledger row: drift stays exactly 7.

    # Reconcile as if run ~7 minutes later: the lost event is past the 5-minute threshold,
    # the in-flight hold (10 minutes of validity) is not expired yet.
    later_ms = now_ms + 400_000
    report = await reconcile(sessions, redis, at_ms=later_ms)

    assert [(d.user_id, d.drift_nusd) for d in report.wallet_drift] == [(user_id, 7)]
    assert [(e.request_id, e.state) for e in report.unsettled_events] == [
        (lost.request_id, "undelivered")
    ]
    assert report.unsettled_events[0].age_ms > 300_000
    assert [h.request_id for h in report.holds_released] == [settled.request_id]
    assert [h.request_id for h in report.holds_expired] == [expired.request_id]
    assert report.usage_without_debit == [unpaid.request_id]
    assert report.debits_without_usage == ["req_orphan_debit"]
    assert report.problems == 4 and report.repairs == 2
    assert "drift" in report.summary()

    # The holds were repaired: only the in-flight one remains, and the total matches it.
    store = HoldStore(redis)
    remaining = await store.holds(user_id)
    assert len(remaining) == 1
    assert await store.held_total(user_id) == remaining[0].amount_nusd
    # A second run repairs nothing more and still reports what needs a person.
    again = await reconcile(sessions, redis, at_ms=later_ms)
    assert again.repairs == 0 and again.problems == 4


async def test_pending_event_past_the_threshold_is_unsettled(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user_id = await funded_user(sessions, 10**9)
    consumer = BillingConsumer(redis, sessions, Funds(redis), consumer_name="rec")
    await consumer.ensure_group()
    event = completion_event(user_id)
    await publish(redis, event)
    # A consumer read it and died.
    await redis.xreadgroup(keys.EVENTS_GROUP, "dead", {keys.EVENTS_STREAM: ">"}, count=10)
    assert (await reconcile(sessions, redis, stuck_after_ms=60_000)).problems == 0  # young
    later = int(time.time() * 1000) + 120_000
    report = await reconcile(sessions, redis, stuck_after_ms=60_000, at_ms=later)
    assert [(e.request_id, e.state) for e in report.unsettled_events] == [
        (event.request_id, "pending")
    ]


async def test_stale_holds_expire_and_the_total_is_recomputed(redis: Redis) -> None:
    now_ms = int(time.time() * 1000)
    await redis.hset(
        keys.holds("usr_a"), mapping={"r1": f"100:{now_ms - 1}", "r2": f"50:{now_ms + 60_000}"}
    )  # type: ignore[misc]
    await redis.set(keys.held_total("usr_a"), 999)
    await redis.set(keys.held_total("usr_b"), 30)  # a total with no holds at all
    await redis.set(keys.balance("usr_a"), 10_000)

    report = await expire_stale_holds(HoldStore(redis), at_ms=now_ms)

    assert report.users_scanned == 2
    assert [(h.user_id, h.request_id) for h in report.expired] == [("usr_a", "r1")]
    assert int(await redis.get(keys.held_total("usr_a"))) == 50
    assert await redis.get(keys.held_total("usr_b")) is None
    assert await redis.get(keys.balance("usr_a")) is None  # reread after a removal
    assert await redis.hkeys(keys.holds("usr_a")) == [b"r2"]  # type: ignore[misc]


# --- the arq jobs ------------------------------------------------------------------------


@pytest_asyncio.fixture
async def ntfy() -> AsyncIterator[tuple[TestServer, list[dict[str, str]]]]:
    received: list[dict[str, str]] = []

    async def topic(request: web.Request) -> web.Response:
        received.append({"title": request.headers["Title"], "body": await request.text()})
        return web.json_response({"id": "x"})

    app = web.Application()
    app.router.add_post("/gateway-alerts", topic)
    server = TestServer(app)
    await server.start_server()
    yield server, received
    await server.close()


async def test_reconcile_job_alerts_on_drift(
    redis: Redis,
    sessions: async_sessionmaker[AsyncSession],
    ntfy: tuple[TestServer, list[dict[str, str]]],
) -> None:
    server, received = ntfy
    user_id = await _settled_world(redis, sessions)
    settings = Settings(ntfy_error_url=str(server.make_url("/gateway-alerts")))
    async with aiohttp.ClientSession() as http:
        deps = JobDeps(settings=settings, sessions=sessions, redis=redis, http=http)
        clean = await reconcile_job({"gw_deps": deps})
        assert clean["problems"] == 0 and received == []

        async with sessions.begin() as s:
            await s.execute(update(Wallet).where(Wallet.user_id == user_id).values(balance_nusd=1))
        result = await reconcile_job({"gw_deps": deps})
    assert result["problems"] == 1
    assert result["wallet_drift"][0]["user_id"] == user_id
    assert len(received) == 1
    assert "reconciliation" in received[0]["title"]
    assert user_id in received[0]["body"]


async def test_the_arq_worker_runs_the_jobs(
    redis: Redis, redis_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    now_ms = int(time.time() * 1000)
    await redis.hset(keys.holds("usr_x"), "old", f"10:{now_ms - 5}")  # type: ignore[misc]
    pool = await create_arq_pool(redis_url)
    async with aiohttp.ClientSession() as http:
        deps = JobDeps(settings=Settings(), sessions=sessions, redis=redis, http=http)
        worker = create_arq_worker(pool, deps)
        task = asyncio.create_task(worker.async_run())
        try:
            job = await pool.enqueue_job("stale_holds_job", _queue_name=ARQ_QUEUE)
            assert job is not None
            result = await job.result(timeout=10, poll_delay=0.05)
        finally:
            await stop_arq_worker(worker, pool, task)
    assert result == {"users_scanned": 1, "expired": [{"user_id": "usr_x", "request_id": "old"}]}
