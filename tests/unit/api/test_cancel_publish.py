"""The api's cancel of a job whose client is gone survives Redis being away for a while."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fakeredis import FakeAsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from services.api import relay
from shared.redis import keys


class _AwayFor:
    """A Redis whose pipelines fail `failures` times, as while it restarts."""

    def __init__(self, redis: FakeAsyncRedis, failures: int) -> None:
        self._redis = redis
        self.failures = failures
        self.tries = 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = self._redis.pipeline(*args, **kwargs)
        execute = pipe.execute

        async def execute_or_fail(*a: Any, **kw: Any) -> Any:
            self.tries += 1
            if self.tries <= self.failures:
                raise RedisConnectionError("Connection refused")
            return await execute(*a, **kw)

        pipe.execute = execute_or_fail
        return pipe


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _next_message(listener: Any) -> bytes | None:
    # The first reads may only consume the subscription's confirmation.
    for _ in range(5):
        message = await listener.get_message(timeout=0.2)
        if message is not None:
            return message["data"]
    return None


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay, "CANCEL_RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(relay, "CANCEL_RETRY_MAX_S", 0.02)


async def test_a_cancel_is_retried_until_redis_is_back_then_published_and_marked() -> None:
    redis = FakeAsyncRedis()
    listener = redis.pubsub(ignore_subscribe_messages=True)
    await listener.subscribe(keys.CANCEL_CHANNEL)
    away = _AwayFor(redis, failures=3)
    deadline_ms = _now_ms() + 30_000

    await relay._publish_cancel(away, "req-1", deadline_ms)  # type: ignore[arg-type]

    assert away.tries == 4
    assert await _next_message(listener) == b"req-1"
    assert await redis.get(keys.cancel_mark("req-1")) == b"1"
    # Kept past the deadline (a worker reads marks at its heartbeat), not forever.
    ttl_ms = await redis.pttl(keys.cancel_mark("req-1"))
    assert 30_000 < ttl_ms <= 30_000 + 60_000
    await listener.aclose()
    await redis.aclose()


async def test_a_cancel_is_given_up_at_the_jobs_deadline() -> None:
    redis = FakeAsyncRedis()
    away = _AwayFor(redis, failures=10**6)
    started = time.monotonic()

    await asyncio.wait_for(
        relay._publish_cancel(away, "req-2", _now_ms() + 100),  # type: ignore[arg-type]
        timeout=5,
    )

    assert time.monotonic() - started < 1.0
    assert 1 < away.tries < 20
    assert await redis.get(keys.cancel_mark("req-2")) is None
    await redis.aclose()


async def test_a_cancel_past_the_deadline_is_tried_once() -> None:
    redis = FakeAsyncRedis()
    away = _AwayFor(redis, failures=10**6)
    await relay._publish_cancel(away, "req-3", _now_ms() - 1)  # type: ignore[arg-type]
    assert away.tries == 1
    await redis.aclose()
