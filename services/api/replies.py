"""One pub/sub connection per api process, shared by every request it serves.

Workers publish frames to `gw:reply:{process_id}`; the hub decodes each frame's header
and hands it to the queue registered for its request id. If the subscription breaks,
frames may have been lost, so every waiting request is told at once (a `None` on its
queue) rather than left to hang until its deadline.

Other broadcast channels the process listens to (key revocations) ride on the same
connection as `ChannelHandler`s: each gets its messages, and is told when the
subscription was (re)made, since messages sent while it was down are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from shared.messages import MessageError, ReplyFrame
from shared.redis import keys

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger("api.replies")

# Frames waiting for one client. A client that reads slower than its provider writes
# stops being fed here: later frames are dropped, its reader sees the sequence gap and
# ends the request (and the upstream call), so api memory stays bounded.
MAX_UNREAD_FRAMES = 2048


class FrameQueue:
    """One request's frames in arrival order, for its one reader; None means "the
    subscription broke; frames may be lost".

    What `asyncio.Queue` does for this case (bounded, non-blocking offer, awaitable
    get) without its producer and task-accounting machinery: one is made per request
    and every frame of every stream passes through one.
    """

    __slots__ = ("_items", "_maxsize", "_waiter")

    def __init__(self, maxsize: int = MAX_UNREAD_FRAMES) -> None:
        self._items: deque[ReplyFrame | None] = deque()
        self._maxsize = maxsize
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, item: ReplyFrame | None) -> bool:
        """Add `item` unless the queue is full; wakes the reader."""
        if len(self._items) >= self._maxsize:
            return False
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def get_nowait(self) -> ReplyFrame | None:
        """The oldest item; IndexError when there is none."""
        return self._items.popleft()

    async def get(self) -> ReplyFrame | None:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class ChannelHandler(Protocol):
    def handle(self, data: bytes) -> None:
        """One message from the channel."""

    def resubscribed(self) -> None:
        """The subscription was (re)made: anything sent meanwhile was missed."""


class ReplyHub:
    def __init__(
        self,
        redis: Redis,
        process_id: str,
        *,
        channels: Mapping[str, ChannelHandler] | None = None,
    ) -> None:
        self._redis = redis
        self.channel = keys.reply_channel(process_id)
        self._channels = {name.encode(): handler for name, handler in (channels or {}).items()}
        self._waiting: dict[str, FrameQueue] = {}
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def register(self, request_id: str) -> FrameQueue:
        queue = FrameQueue()
        self._waiting[request_id] = queue
        return queue

    def unregister(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    async def start(self, timeout_s: float = 10.0) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), timeout_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff_s = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel, *self._channels)
                for handler in self._channels.values():
                    handler.resubscribed()
                self.ready.set()
                backoff_s = 0.1
                connection = pubsub.connection
                if connection is None:
                    raise RedisConnectionError("pub/sub connection missing after SUBSCRIBE")
                while True:
                    # Straight from the connection: `PubSub.get_message` adds a health
                    # check, a retry wrapper and a dict per message, and every frame of
                    # every stream this process serves passes here.
                    response = await connection.read_response()
                    if type(response) is not list or len(response) != 3:
                        continue
                    kind, channel, data = response
                    if kind != b"message":
                        continue  # the subscription's confirmations
                    handler = self._channels.get(channel)
                    if handler is None:
                        self._dispatch(data)
                    else:
                        handler.handle(data)
            except (RedisError, OSError) as exc:
                self.ready.clear()
                log.warning("reply_subscription_lost", error=str(exc), waiting=len(self._waiting))
                for queue in self._waiting.values():
                    _offer(queue, None)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _dispatch(self, raw: bytes) -> None:
        try:
            frames = ReplyFrame.decode_many(raw)
        except MessageError as exc:
            log.error("reply_frame_undecodable", error=str(exc))
            return
        waiting = self._waiting
        for frame in frames:
            queue = waiting.get(frame.request_id)
            if queue is not None:
                _offer(queue, frame)


def _offer(queue: FrameQueue, item: ReplyFrame | None) -> None:
    # A full queue drops the frame: the reader finds the gap when it catches up, and ends
    # the request.
    queue.offer(item)
