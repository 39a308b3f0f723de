"""PostgreSQL goes away for 30 s; Redis restarts (append-only persistence on)."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from shared.redis import keys
from tests.audit import stream_state, wait_settled
from tests.faults.checks import (
    assert_clean_outcomes,
    assert_errors_not_billed_as_answers,
    log_events,
)
from tests.faults.conftest import count_fault
from tests.faults.harness import FaultStack
from tests.faults.load import Mix, Seen, run_load

PG_OUTAGE_S = 30.0  # the number


@pytest.mark.timeout(180)
async def test_postgres_down_30s_under_load(fstack: FaultStack, settled_audit: list[Seen]) -> None:
    """Keys and balances are cached (warm-up), so requests keep being served while the
    database is down; billing backs off, then settles everything once it is back."""
    _user, key = await fstack.funded_user("50")
    warm = await run_load(fstack.api_url, [key], max_requests=4, concurrency=2)
    settled_audit.extend(warm.seen)
    assert all(s.ok for s in warm.seen), warm.statuses()
    await wait_settled(fstack.redis_url)

    stop = asyncio.Event()
    load = asyncio.create_task(
        run_load(
            fstack.api_url,
            [key],
            max_requests=3000,
            concurrency=4,
            stop=stop,
            mix=Mix(stream_fraction=0.5, slow_fraction=0.2),
            pace_s=0.05,
        )
    )
    await asyncio.sleep(1.0)
    fstack.pg.stop()
    down_at = time.monotonic()
    await asyncio.sleep(PG_OUTAGE_S)
    fstack.pg.start()
    up_at = time.monotonic()
    await asyncio.sleep(1.0)
    stop.set()
    report = await load
    settled_audit.extend(report.seen)
    during = [s for s in report.seen if down_at <= s.started_s <= up_at]
    count_fault(during)

    print(f"PostgreSQL down {up_at - down_at:.1f} s: {len(during)} requests during, {report.statuses()}")
    assert len(during) > 50, "too little traffic during the outage to prove anything"
    assert all(s.ok for s in report.seen), report.statuses()
    assert_clean_outcomes(report.seen)
    assert log_events(fstack.log_dir / "billing.log", "billing_db_unavailable"), (
        "billing never noticed the outage"
    )
    await wait_settled(fstack.redis_url, timeout_s=60)


@pytest.mark.timeout(150)
async def test_redis_restart_with_append_only(
    fstack: FaultStack, settled_audit: list[Seen]
) -> None:
    """In-flight requests fail cleanly (503, OpenAI format); new ones succeed once Redis
    is back; completion events still unsettled in the stream survive the restart."""
    _user, key = await fstack.funded_user("50")
    fstack.kill("billing")  # so that events wait, unsettled, in the stream
    before = await run_load(fstack.api_url, [key], max_requests=20, concurrency=4)
    settled_audit.extend(before.seen)
    assert all(s.ok for s in before.seen), before.statuses()

    stop = asyncio.Event()
    load = asyncio.create_task(
        run_load(
            fstack.api_url,
            [key],
            max_requests=400,
            concurrency=8,
            stop=stop,
            mix=Mix(stream_fraction=0.6, slow_fraction=1.0),
            pace_s=0.1,
        )
    )
    await asyncio.sleep(1.0)
    redis = Redis.from_url(fstack.redis_url)
    try:
        events = await stream_state(redis, keys.EVENTS_STREAM, keys.EVENTS_GROUP)
        unsettled = events.lag + events.pending
    finally:
        await redis.aclose()
    down_at = time.monotonic()
    fstack.redis.restart()
    up_at = time.monotonic()
    await asyncio.sleep(3.0)
    stop.set()
    during = await load
    settled_audit.extend(during.seen)
    count_fault(during.seen)
    in_flight = [s for s in during.seen if s.started_s < down_at and s.ended_s > down_at]
    refused = [s for s in during.seen if not s.ok]
    print(
        f"Redis restart ({up_at - down_at:.1f} s): {len(during.seen)} requests, "
        f"{len(in_flight)} in flight, {during.statuses()}, {unsettled} events waited"
    )
    assert_clean_outcomes(during.seen)
    assert refused, "the restart caused no visible failure: it did not land under load"
    for s in refused:
        assert s.status == 503 or (s.error or {}).get("code") == "service_unavailable", (
            f"request {s.index}: {s.status} {s.error}"
        )

    after = await run_load(fstack.api_url, [key], max_requests=12, concurrency=4)
    settled_audit.extend(after.seen)
    assert all(s.ok for s in after.seen), after.statuses()
    assert unsettled >= len(before.seen)
    fstack.start_service("billing")
    await wait_settled(fstack.redis_url, timeout_s=60)
    streams_cut = [s for s in refused if s.error_kind == "stream"]
    await assert_errors_not_billed_as_answers(fstack, streams_cut)


@pytest.mark.timeout(120)
async def test_request_refused_by_redis_restart_is_not_billed_as_answer(
    fstack: FaultStack, settled_audit: list[Seen]
) -> None:
    """Non-streaming requests answered 503 because the api lost its reply channel in a
    Redis restart are stopped, not served to the end and billed as whole answers: the
    api keeps its cancel until Redis is back and leaves a mark the worker reads when it
    subscribes again (the cancel itself is published while the worker is away)."""
    _user, key = await fstack.funded_user("50")
    slow = Mix(stream_fraction=0.0, slow_fraction=0.0)
    slow.prompt = lambda _rng, i: f"slow plain {i} [[fake:chunks=20,chunk_delay_ms=100]]"
    load = asyncio.create_task(run_load(fstack.api_url, [key], max_requests=6, concurrency=6, mix=slow))
    await asyncio.sleep(0.7)
    fstack.redis.restart()
    report = await load
    settled_audit.extend(report.seen)
    count_fault(report.seen)
    refused = [s for s in report.seen if not s.ok]
    assert refused and all(s.status == 503 for s in refused), report.statuses()
    await wait_settled(fstack.redis_url, timeout_s=60)
    await assert_errors_not_billed_as_answers(fstack, refused)
