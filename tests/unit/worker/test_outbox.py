"""The outbox sends what many jobs submit in one pipeline and hands each its outcome."""

from __future__ import annotations

import asyncio

from fakeredis import FakeAsyncRedis

from services.worker.outbox import Outbox


class CountingRedis(FakeAsyncRedis):
    pipelines = 0

    def pipeline(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        CountingRedis.pipelines += 1
        return super().pipeline(*args, **kwargs)


def rpush_all(pipe, items: list[int]) -> None:  # type: ignore[no-untyped-def]
    pipe.rpush("together", *items)


async def test_items_of_one_tick_share_a_pipeline_and_one_build_per_group() -> None:
    redis = CountingRedis()
    outbox = Outbox(redis)
    calls: list[list[int]] = []

    def counted(pipe, items: list[int]) -> None:  # type: ignore[no-untyped-def]
        calls.append(items)
        pipe.incrby("counted", len(items))

    CountingRedis.pipelines = 0
    pushed = [outbox.submit_together(rpush_all, i) for i in range(50)]
    counts = [outbox.submit_together(counted, i) for i in range(3)]
    frames = outbox.send_frames("nobody-listens", lambda: b"x")
    assert await asyncio.gather(*pushed, *counts) == [None] * 53
    assert await frames == 0
    assert CountingRedis.pipelines == 1 and calls == [[0, 1, 2]]
    assert await redis.lrange("together", 0, -1) == [str(i).encode() for i in range(50)]
    assert await redis.get("counted") == b"3"
    await redis.aclose()


async def test_a_group_whose_command_fails_fails_alone() -> None:
    redis = FakeAsyncRedis()
    await redis.set("s", "string")
    outbox = Outbox(redis)

    def lpush_each(pipe, keys: list[str]) -> None:  # type: ignore[no-untyped-def]
        for key in keys:
            pipe.lpush(key, 1)

    good = outbox.submit_together(rpush_all, 1)
    # Built just before the failing group: a group that adds no command must not be
    # handed the next command's outcome.
    nothing = outbox.submit_together(lambda pipe, items: None, "x")
    both = [outbox.submit_together(lpush_each, key) for key in ("s", "list")]  # s: wrong type
    results = await asyncio.gather(*both, return_exceptions=True)
    assert all("WRONGTYPE" in str(r) for r in results)
    assert await good is None and await nothing is None
    assert await redis.lrange("together", 0, -1) == [b"1"]
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
