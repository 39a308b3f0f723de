"""A client that never reads cannot make the api hold an unbounded backlog."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.api.relay import FrameReader
from services.api.replies import MAX_UNREAD_FRAMES, FrameQueue, ReplyHub
from shared.errors import GatewayTimeout, ServiceUnavailable
from shared.messages import FrameKind, ReplyFrame


async def test_backlog_is_bounded_and_the_reader_sees_the_gap() -> None:
    hub = ReplyHub(redis=None, process_id="p")  # type: ignore[arg-type]  # no I/O in this test
    queue = hub.register("r1")
    for seq in range(MAX_UNREAD_FRAMES + 50):
        hub._dispatch(ReplyFrame("r1", seq, FrameKind.CHUNKS, b"data: x\n\n").encode())
    assert queue.qsize() == MAX_UNREAD_FRAMES
    reader = FrameReader(queue, deadline_ms=2**62)
    for _ in range(MAX_UNREAD_FRAMES):
        await reader.next()
    hub._dispatch(ReplyFrame("r1", MAX_UNREAD_FRAMES + 50, FrameKind.DONE, b"").encode())
    with pytest.raises(ServiceUnavailable):
        await reader.next()


async def test_a_reader_waiting_on_an_empty_queue_times_out_at_the_deadline() -> None:
    hub = ReplyHub(redis=None, process_id="p")  # type: ignore[arg-type]
    queue = hub.register("r1")
    reader = FrameReader(queue, deadline_ms=time.time_ns() // 1_000_000 + 150)
    hub._dispatch(ReplyFrame("r1", 0, FrameKind.CHUNKS, b"data: x\n\n").encode())
    assert (await reader.next()).seq == 0
    started = time.monotonic()
    with pytest.raises(GatewayTimeout):
        await asyncio.wait_for(reader.next(), 5)
    assert 0.05 < time.monotonic() - started < 2
    reader.close()


async def test_closing_the_reader_cancels_its_deadline_timer() -> None:
    queue = ReplyHub(redis=None, process_id="p").register("r1")  # type: ignore[arg-type]
    reader = FrameReader(queue, deadline_ms=time.time_ns() // 1_000_000 + 50)
    reader.close()
    await asyncio.sleep(0.1)
    assert queue.empty()  # no deadline marker left behind for nobody


async def test_the_frame_queue_wakes_its_reader_keeps_order_and_survives_a_cancelled_get() -> None:
    queue = FrameQueue(maxsize=2)
    first = ReplyFrame("r1", 0, FrameKind.CHUNKS, b"a")
    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    assert queue.offer(first)
    assert await asyncio.wait_for(waiting, 1) is first
    # A reader cancelled while waiting (the client went away) leaves no stale waiter.
    cancelled = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert queue.offer(None) and queue.offer(first) and not queue.offer(first)  # full at 2
    assert queue.qsize() == 2
    assert await queue.get() is None and queue.get_nowait() is first and queue.empty()
