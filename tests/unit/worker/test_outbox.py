"""The outbox sends the commands of many jobs in one pipeline and hands each its results."""

from __future__ import annotations

import asyncio

import pytest
from fakeredis import FakeAsyncRedis

from services.worker.outbox import Outbox


class CountingRedis(FakeAsyncRedis):
    pipelines = 0

    def pipeline(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        CountingRedis.pipelines += 1
        return super().pipeline(*args, **kwargs)


async def test_commands_of_one_tick_share_a_pipeline_and_get_their_own_results() -> None:
    redis = CountingRedis()
    outbox = Outbox(redis)
    CountingRedis.pipelines = 0
    pushes = [outbox.submit(lambda pipe, i=i: (pipe.rpush("l", i), pipe.llen("l"))) for i in range(50)]
    results = await asyncio.gather(*pushes)
    assert CountingRedis.pipelines == 1
    assert [r[1] for r in results] == list(range(1, 51))  # in submission order
    assert await outbox.send_frames("nobody-listens", lambda: b"x") == 0
    # A submitter that added no command gets no result, not its neighbour's.
    empty, counted = outbox.submit(lambda pipe: None), outbox.submit(lambda pipe: pipe.incr("n"))
    assert await empty == [] and await counted == [1]
    await redis.aclose()


async def test_a_failing_command_fails_only_its_own_submitter() -> None:
    redis = FakeAsyncRedis()
    await redis.set("s", "string")
    outbox = Outbox(redis)
    good = outbox.submit(lambda pipe: pipe.incr("n"))
    bad = outbox.submit(lambda pipe: pipe.lpush("s", 1))  # wrong type
    assert await good == [1]
    with pytest.raises(Exception, match="WRONGTYPE"):
        await bad
    await redis.aclose()


async def test_frames_for_one_channel_share_one_publish_in_submission_order() -> None:
    redis = FakeAsyncRedis()
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("api-1")
    outbox = Outbox(redis)
    sent = [outbox.send_frames("api-1", lambda i=i: b"frame%d;" % i) for i in range(5)]
    nothing = outbox.send_frames("api-1", lambda: b"")
    elsewhere = outbox.send_frames("api-2", lambda: b"other")
    assert await asyncio.gather(*sent) == [1] * 5  # one subscriber got each
    assert await nothing is None and await elsewhere == 0
    received = []
    for _ in range(20):  # the first reads may only answer the subscription
        message = await pubsub.get_message(timeout=0.05)
        if message is not None:
            received.append(message["data"])
    assert received == [b"frame0;frame1;frame2;frame3;frame4;"]  # one PUBLISH, not five
    await pubsub.aclose()
    await redis.aclose()


async def test_items_submitted_together_are_built_by_one_call_per_flush() -> None:
    redis = CountingRedis()
    outbox = Outbox(redis)
    calls: list[list[int]] = []

    def build_all(pipe, items: list[int]) -> None:  # type: ignore[no-untyped-def]
        calls.append(items)
        pipe.rpush("together", *items)

    CountingRedis.pipelines = 0
    own = outbox.submit(lambda pipe: pipe.incr("own"))
    done = [outbox.submit_together(build_all, i) for i in range(4)]
    assert await asyncio.gather(*done) == [None] * 4
    assert await own == [1]
    assert calls == [[0, 1, 2, 3]] and CountingRedis.pipelines == 1
    assert await redis.lrange("together", 0, -1) == [b"0", b"1", b"2", b"3"]
    await redis.aclose()


async def test_items_built_together_fail_together() -> None:
    redis = FakeAsyncRedis()
    await redis.set("s", "string")
    outbox = Outbox(redis)

    def build_all(pipe, items: list[str]) -> None:  # type: ignore[no-untyped-def]
        for key in items:
            pipe.lpush(key, 1)

    good_alone = outbox.submit(lambda pipe: pipe.incr("n"))
    both = [outbox.submit_together(build_all, key) for key in ("list", "s")]
    results = await asyncio.gather(*both, return_exceptions=True)
    assert all("WRONGTYPE" in str(r) for r in results)
    assert await good_alone == [1]
    await redis.aclose()
