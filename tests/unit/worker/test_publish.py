"""A job's reply frames: coalesced per outbox flush, in order, the end after the chunks."""

from __future__ import annotations

import asyncio

from fakeredis import FakeAsyncRedis

from services.worker.outbox import Outbox
from services.worker.publish import ReplyPublisher
from shared.messages import FrameKind, ReplyFrame


async def frames_of(pubsub) -> list[ReplyFrame]:  # type: ignore[no-untyped-def]
    frames: list[ReplyFrame] = []
    for _ in range(20):
        message = await pubsub.get_message(timeout=0.05)
        if message is not None:
            frames.extend(ReplyFrame.decode_many(message["data"]))
    return frames


async def listening(redis: FakeAsyncRedis):  # type: ignore[no-untyped-def]
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("api")
    return pubsub


async def test_pushes_before_a_flush_leave_as_one_frame_then_the_end_frame() -> None:
    redis = FakeAsyncRedis()
    pubsub = await listening(redis)
    publisher = ReplyPublisher(Outbox(redis), "api", "req-1")
    publisher.push(b"data: 1\n\n", {"provider": "p"})
    publisher.push(b"data: 2\n\n")
    await asyncio.sleep(0.01)  # the outbox flushes
    publisher.push(b"data: 3\n\n")
    await publisher.finish(FrameKind.DONE, b"data: [DONE]\n\n", {"status": 200})
    frames = await frames_of(pubsub)
    assert [(f.seq, f.kind, f.payload, f.meta) for f in frames] == [
        (0, FrameKind.CHUNKS, b"data: 1\n\ndata: 2\n\n", {"provider": "p"}),
        (1, FrameKind.DONE, b"data: 3\n\ndata: [DONE]\n\n", {"status": 200}),
    ]
    assert not publisher.listener_gone.is_set()
    await pubsub.aclose()
    await redis.aclose()


async def test_chunks_pending_at_an_error_go_in_their_own_frame_before_it() -> None:
    redis = FakeAsyncRedis()
    pubsub = await listening(redis)
    publisher = ReplyPublisher(Outbox(redis), "api", "req-1", generation=2)
    publisher.push(b"data: 1\n\n")
    await publisher.finish(FrameKind.ERROR, b'{"error": {}}', {"status": 502})
    frames = await frames_of(pubsub)
    assert [(f.seq, f.kind, f.payload, f.generation) for f in frames] == [
        (0, FrameKind.CHUNKS, b"data: 1\n\n", 2),
        (1, FrameKind.ERROR, b'{"error": {}}', 2),
    ]
    await pubsub.aclose()
    await redis.aclose()


async def test_nobody_listening_marks_the_client_gone_and_abandon_sends_nothing_more() -> None:
    redis = FakeAsyncRedis()
    publisher = ReplyPublisher(Outbox(redis), "api", "req-1")
    publisher.push(b"data: 1\n\n")
    await asyncio.sleep(0.01)
    assert publisher.listener_gone.is_set()
    pubsub = await listening(redis)
    publisher.push(b"data: 2\n\n")
    await publisher.abandon()
    assert await frames_of(pubsub) == []
    await pubsub.aclose()
    await redis.aclose()
