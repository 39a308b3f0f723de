"""The billing consumer dies or stops with events in hand."""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import pytest
from redis.asyncio import Redis

from shared.redis import keys
from tests.audit import stream_state
from tests.faults.checks import assert_clean_outcomes, log_events
from tests.faults.conftest import count_fault
from tests.faults.harness import FaultStack
from tests.faults.load import Mix, Seen, run_load

pytestmark = pytest.mark.timeout(150)


async def test_kill_9_billing_mid_batch_then_restart(
    fstack: FaultStack, settled_audit: list[Seen]
) -> None:
    """Events pile up while billing is down. Billing starts and reads a batch, whose
    settlement waits on the wallet's row lock (held by the test, so the kill lands
    mid-batch every time); it is SIGKILLed there and restarted: every event is settled
    exactly once."""
    user_id, key = await fstack.funded_user("50")
    fstack.kill("billing")
    report = await run_load(
        fstack.api_url,
        [key],
        max_requests=160,
        concurrency=16,
        mix=Mix(stream_fraction=0.3, slow_fraction=0.0),
    )
    settled_audit.extend(report.seen)
    assert all(s.ok for s in report.seen), report.statuses()

    redis = Redis.from_url(fstack.redis_url)
    blocker = await asyncpg.connect(fstack.pg_dsn)
    try:
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("SELECT 1 FROM wallets WHERE user_id = $1 FOR UPDATE", user_id)
        fstack.start_service("billing")
        for _ in range(200):
            events = await stream_state(redis, keys.EVENTS_STREAM, keys.EVENTS_GROUP)
            if events.pending:
                break
            await asyncio.sleep(0.05)
        fstack.kill("billing")
        events = await stream_state(redis, keys.EVENTS_STREAM, keys.EVENTS_GROUP)
        await lock.rollback()
        settled = await blocker.fetchval(
            "SELECT count(*) FROM usage_records WHERE user_id = $1", user_id
        )
    finally:
        await blocker.close()
        await redis.aclose()
    count_fault(report.seen)
    print(
        f"kill -9 billing: {len(report.seen)} events, {settled} settled at the kill, "
        f"{events.pending} read-but-unacked (the batch in hand), {events.lag} unread"
    )
    assert settled == 0
    assert events.pending > 0, "billing had no batch in hand when it was killed"
    fstack.start_service("billing")
    assert_clean_outcomes(report.seen)
    # The audit (fixture) then waits for billing to settle and checks exactly-once.


async def test_sigterm_billing_drains_its_batch(
    fstack: FaultStack, settled_audit: list[Seen]
) -> None:
    """SIGTERM under load: billing finishes the batch in hand and exits 0; the events
    that arrive while it is down are settled after it restarts."""
    _user, key = await fstack.funded_user("50")
    load = asyncio.create_task(
        run_load(fstack.api_url, [key], max_requests=120, concurrency=8, mix=Mix(slow_fraction=0.2))
    )
    await asyncio.sleep(0.8)
    proc = fstack.signal("billing", signal.SIGTERM)
    exit_code = await asyncio.to_thread(proc.wait, 30)
    report = await load
    settled_audit.extend(report.seen)
    count_fault(report.seen)
    assert exit_code == 0
    assert log_events(fstack.log_dir / "billing.log", "billing_consumer_stopped")
    assert all(s.ok for s in report.seen), report.statuses()
    fstack.start_service("billing")
