"""Backlog gauges read from Redis at scrape time, and the tiny metrics server."""

from __future__ import annotations

import time

import aiohttp
from fakeredis.aioredis import FakeRedis
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis

from services.billing.metrics import BillingMetrics
from services.runner import free_port
from shared.messages import Outcome
from shared.metrics import QueueGauges, start_metrics_server
from shared.metrics.queues import EVENTS, JOBS, read_queues
from shared.redis import keys
from tests.unit.metrics.helpers import scrape, value
from tests.unit.metrics.test_worker_metrics import event


async def backlog(redis: FakeRedis) -> None:
    """Jobs: 3 queued, 1 taken by a worker. Events: 2 written, none read. One live worker."""
    await redis.xgroup_create(keys.JOBS_STREAM, keys.JOBS_GROUP, id="0", mkstream=True)
    for i in range(3):
        await redis.xadd(keys.JOBS_STREAM, {"m": str(i)})
    await redis.xreadgroup(keys.JOBS_GROUP, "w1", {keys.JOBS_STREAM: ">"}, count=1)
    await redis.xgroup_create(keys.EVENTS_STREAM, keys.EVENTS_GROUP, id="0", mkstream=True)
    for i in range(2):
        await redis.xadd(keys.EVENTS_STREAM, {"e": str(i)})
    now = int(time.time() * 1000)
    await redis.zadd(keys.WORKERS_HEARTBEAT, {"alive": now - 1000, "dead": now - 60_000})


async def test_read_queues(fake_redis: FakeRedis) -> None:
    empty = await read_queues(fake_redis, (JOBS, EVENTS))
    assert empty.streams[JOBS.stream].length == 0 and empty.workers == []
    await backlog(fake_redis)
    snapshot = await read_queues(fake_redis, (JOBS, EVENTS))
    jobs, events = snapshot.streams[JOBS.stream], snapshot.streams[EVENTS.stream]
    assert (jobs.length, jobs.pending, jobs.lag, jobs.unprocessed) == (3, 1, 2, 3)
    assert (events.length, events.pending, events.lag, events.unprocessed) == (2, 0, 2, 2)
    assert [name for name, _age in snapshot.workers] == ["alive"]


async def test_gauges_export_the_last_refresh(fake_redis: FakeRedis) -> None:
    registry = CollectorRegistry()
    gauges = QueueGauges(fake_redis, (JOBS, EVENTS))
    registry.register(gauges)
    await backlog(fake_redis)
    await gauges.refresh()
    text = scrape(registry)
    assert value(text, "gateway_redis_up") == 1
    assert value(text, "gateway_stream_length", stream="gw:jobs") == 3
    assert value(text, "gateway_stream_pending", stream="gw:jobs", group="workers") == 1
    assert value(text, "gateway_stream_lag", stream="gw:jobs", group="workers") == 2
    assert value(text, "gateway_stream_unprocessed", stream="gw:events", group="billing") == 2
    assert value(text, "gateway_workers_live") == 1

    unreachable = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    broken = QueueGauges(unreachable, (JOBS,))
    await broken.refresh()
    await unreachable.aclose()
    registry = CollectorRegistry()
    registry.register(broken)
    text = scrape(registry)
    assert value(text, "gateway_redis_up") == 0
    assert value(text, "gateway_stream_length", stream="gw:jobs") is None


async def test_billing_metrics(fake_redis: FakeRedis) -> None:
    registry = CollectorRegistry()
    billing = BillingMetrics(registry, fake_redis, dead_letter_stream="gw:events:dead")
    await fake_redis.xadd("gw:events:dead", {"e": "bad"})
    billing.observe(event(cost_nusd=1000, finished_ms=int(time.time() * 1000) - 1500), settled=True)
    billing.observe(event(cost_nusd=500, outcome=Outcome.CANCELLED), settled=True)
    billing.observe(event(cost_nusd=1000), settled=False)  # a redelivery: nothing new
    for refresh in billing.refreshers:
        await refresh()
    text = scrape(registry)
    assert value(text, "gateway_billing_events_total", result="settled") == 2
    assert value(text, "gateway_billing_events_total", result="skipped") == 1
    assert value(text, "gateway_billing_settled_nusd_total") == 1500
    assert value(text, "gateway_billing_settle_delay_seconds_bucket", le="1.0") == 0
    assert value(text, "gateway_billing_settle_delay_seconds_bucket", le="2.5") == 1
    assert value(text, "gateway_stream_length", stream="gw:events:dead") == 1


async def test_metrics_server_serves_and_survives_a_busy_port() -> None:
    registry = CollectorRegistry()
    hits = Counter("test_hits", "hits", registry=registry)
    refreshed: list[int] = []

    async def refresh() -> None:
        refreshed.append(1)
        hits.inc()

    port = free_port()
    server = await start_metrics_server(registry, [refresh], host="127.0.0.1", port=port)
    assert server is not None
    try:
        # The same port again: logged, None, and no exception for the service.
        assert await start_metrics_server(registry, host="127.0.0.1", port=port) is None
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
        assert value(text, "test_hits_total") == 1 and refreshed == [1]
    finally:
        await server.close()
    assert await start_metrics_server(registry, host="127.0.0.1", port=0) is None
