"""The api's reply hub on a real Redis: frames reach their requests, broadcast channels
their handlers, and a lost subscription tells every waiting request, then comes back."""

from __future__ import annotations

import asyncio
import os
import uuid

from shared.messages import FrameKind, ReplyFrame
from shared.redis import keys
from shared.redis.client import redis_client
from services.api.replies import ReplyHub

URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


class Recorder:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.resubscribed_count = 0

    def handle(self, data: bytes) -> None:
        self.messages.append(data)

    def resubscribed(self) -> None:
        self.resubscribed_count += 1


async def test_frames_and_broadcasts_reach_their_readers_and_a_lost_link_is_told() -> None:
    process_id = f"hub-{uuid.uuid4().hex[:8]}"
    redis = redis_client(URL, client_name=process_id)
    events = Recorder()
    broadcast = f"test-events-{process_id}"
    hub = ReplyHub(redis, process_id, channels={broadcast: events})
    await hub.start()
    try:
        first, second = hub.register("r1"), hub.register("r2")
        batch = ReplyFrame("r1", 0, FrameKind.CHUNKS, b"data: a\n\n").encode() + ReplyFrame(
            "r2", 0, FrameKind.RESPONSE, b"{}"
        ).encode()
        assert await redis.publish(keys.reply_channel(process_id), batch) == 1
        await redis.publish(broadcast, b"key-revoked")
        got1 = await asyncio.wait_for(first.get(), 2)
        got2 = await asyncio.wait_for(second.get(), 2)
        assert got1 is not None and got1.payload == b"data: a\n\n"
        assert got2 is not None and got2.kind is FrameKind.RESPONSE
        for _ in range(100):
            if events.messages:
                break
            await asyncio.sleep(0.01)
        assert events.messages == [b"key-revoked"] and events.resubscribed_count == 1

        # The server drops the subscription: waiting requests hear of it at once ...
        # (only this hub's: other tests' stacks may share the server)
        [subscriber] = [
            c for c in await redis.client_list() if c["name"] == process_id and int(c["sub"]) > 0
        ]
        await redis.execute_command("CLIENT", "KILL", "ID", subscriber["id"])
        assert await asyncio.wait_for(first.get(), 2) is None
        # ... and the hub subscribes again.
        for _ in range(300):
            if events.resubscribed_count == 2 and hub.ready.is_set():
                break
            await asyncio.sleep(0.01)
        assert events.resubscribed_count == 2
        assert await redis.publish(keys.reply_channel(process_id), ReplyFrame(
            "r1", 1, FrameKind.DONE, b""
        ).encode()) == 1  # fmt: skip
        got = await asyncio.wait_for(first.get(), 2)
        assert got is not None and got.kind is FrameKind.DONE
    finally:
        await hub.stop()
        await redis.aclose()
