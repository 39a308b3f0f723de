"""A client that never reads cannot make the api hold an unbounded backlog."""

from __future__ import annotations

import pytest

from services.api.relay import FrameReader
from services.api.replies import MAX_UNREAD_FRAMES, ReplyHub
from shared.errors import ServiceUnavailable
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
