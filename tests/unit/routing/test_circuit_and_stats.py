from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from fakeredis import FakeAsyncRedis

from shared.circuit import CircuitPolicy, Circuits, CircuitState
from shared.provider_stats import Sample, add_samples, read_stats, summarise


@pytest_asyncio.fixture
async def redis() -> AsyncIterator[FakeAsyncRedis]:
    client = FakeAsyncRedis()
    yield client
    await client.aclose()


class TestCircuit:
    async def test_opens_after_threshold_and_probes_after_cooldown(self, redis: FakeAsyncRedis) -> None:
        a = Circuits(redis, CircuitPolicy(failure_threshold=3, cooldown_ms=0, probe_lock_ms=60_000))
        b = Circuits(redis, a.policy)  # another worker
        assert not await a.record_failure("p", "m")
        assert not await a.record_failure("p", "m")
        assert await b.record_failure("p", "m")  # the third, from another worker, opens it
        await a.refresh([("p", "m")])
        assert a.snapshot[("p", "m")].state is CircuitState.OPEN
        # Cooldown 0: exactly one worker wins the half-open probe.
        await b.refresh([("p", "m")])
        assert await a.allow("p", "m") is True
        assert await b.allow("p", "m") is False
        assert (await a.read([("p", "m")]))[("p", "m")].state is CircuitState.HALF_OPEN
        await a.refresh([("p", "m")])
        assert await a.record_success("p", "m") is True
        assert (await b.read([("p", "m")]))[("p", "m")].state is CircuitState.CLOSED

    async def test_failed_probe_reopens(self, redis: FakeAsyncRedis) -> None:
        c = Circuits(redis, CircuitPolicy(failure_threshold=1, cooldown_ms=0))
        assert await c.record_failure("p", "m")
        await c.refresh([("p", "m")])
        assert await c.allow("p", "m")
        assert await c.record_failure("p", "m")  # half-open failure opens again
        assert (await c.read([("p", "m")]))[("p", "m")].state is CircuitState.OPEN

    async def test_open_circuit_skipped_during_cooldown(self, redis: FakeAsyncRedis) -> None:
        c = Circuits(redis, CircuitPolicy(failure_threshold=1, cooldown_ms=60_000))
        await c.record_failure("p", "m")
        await c.refresh([("p", "m")])
        assert await c.allow("p", "m") is False

    async def test_success_on_closed_circuit_costs_nothing(self, redis: FakeAsyncRedis) -> None:
        c = Circuits(redis)
        assert await c.record_success("p", "m") is False
        assert await redis.exists("gw:circuit:p:m") == 0


class TestStats:
    async def test_samples_round_trip_and_summarise(self, redis: FakeAsyncRedis) -> None:
        now = 1_000_000
        async with redis.pipeline() as pipe:
            for latency in (100, 200, 300, 400):
                add_samples(pipe, "p", "m", [Sample(now, True, latency, ttft_ms=latency // 2, tokens_per_s=20.0)])
            add_samples(pipe, "p", "m", [Sample(now, False, 50), Sample(now, False, 60)])
            await pipe.execute()
        stats = (await read_stats(redis, [("p", "m")]))[("p", "m")]
        assert stats.samples == 0  # far in the past relative to the wall clock: outside the window
        fresh = summarise(
            [Sample(now, True, lat, ttft_ms=lat // 2) for lat in (100, 200, 300, 400)] + [Sample(now, False, 5)],
            now_ms=now,
        )
        assert fresh.samples == 5 and fresh.successes == 4
        assert fresh.latency_ms == (200.0, 400.0, 400.0)
        assert fresh.ttft_ms[0] == 100.0

    def test_decode_rejects_garbage(self) -> None:
        assert Sample.decode(b"nonsense") is None
        sample = Sample(1, True, 2, None, None)
        assert Sample.decode(sample.encode()) == sample


async def test_probe_due_after_cooldown(redis: FakeAsyncRedis) -> None:
    c = Circuits(redis, CircuitPolicy(failure_threshold=1, cooldown_ms=1000))
    await c.record_failure("p", "m")
    opened = c.snapshot[("p", "m")].opened_ms
    assert opened is not None
    assert not c.probe_due("p", "m", now_ms=opened + 10)
    assert c.probe_due("p", "m", now_ms=opened + 1000)
    assert not c.probe_due("q", "m")


async def test_poisoned_requests_do_not_open_a_healthy_providers_circuit(redis: FakeAsyncRedis) -> None:
    """Failures that come with mostly successful recent attempts keep the circuit closed."""
    c = Circuits(redis, CircuitPolicy(failure_threshold=3, cooldown_ms=60_000, recent_samples=20))
    async with redis.pipeline() as pipe:
        # 10% failures lately, pushed in one command
        add_samples(pipe, "p", "m", [Sample(1, i % 10 != 0, 5) for i in range(20)])
        await pipe.execute()
    for _ in range(5):
        assert not await c.record_failure("p", "m")
    assert (await c.read([("p", "m")]))[("p", "m")].state is CircuitState.CLOSED

    async with redis.pipeline() as pipe:
        for _ in range(20):
            add_samples(pipe, "p", "m", [Sample(2, False, 5)])  # now it really is failing
        await pipe.execute()
    assert await c.record_failure("p", "m")
