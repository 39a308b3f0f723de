"""Everything this worker sends to Redis for its jobs, sent together.

Jobs submit commands (a finished job's XADD + XACK + health samples) and reply frames;
the outbox sends all that were submitted during one turn of the event loop in one
pipeline, wrapped in MULTI/EXEC when it holds more than reply frames, while the next
turn's commands gather behind it. Reply frames bound for the same api process travel in
one PUBLISH, whichever requests they belong to. Fifty streams each sending a chunk every
few milliseconds then cost a few Redis commands per tick instead of fifty, and each job
still sees its own results in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

Build = Callable[["Pipeline"], None]
# Called when the pipeline is built, so that whatever was queued until then goes along:
# the encoded frames to publish (b"" when there is nothing left to send).
TakeFrames = Callable[[], bytes]


class Outbox:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._queued: list[tuple[Build | tuple[str, TakeFrames], asyncio.Future[Any]]] = []
        self._flushing: asyncio.Task[None] | None = None

    def submit(self, build: Build) -> asyncio.Future[list[Any]]:
        """Queue the commands `build` adds to a pipeline; the future gets their results."""
        return self._queue(build)

    def send_frames(self, channel: str, take: TakeFrames) -> asyncio.Future[int | None]:
        """Publish what `take()` returns on `channel`, with the other frames for that
        channel; the future gets how many subscribers received it (None: nothing sent)."""
        return self._queue((channel, take))

    def _queue(self, item: Build | tuple[str, TakeFrames]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((item, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            # (future, first result index, result count, whether it sent frames: its
            # result is then its channel's PUBLISH answer, not a list).
            slots: list[tuple[asyncio.Future[Any], int, int, bool]] = []
            # Reply frames alone need no MULTI/EXEC: a PUBLISH is atomic on its own.
            transaction = any(not isinstance(item, tuple) for item, _future in batch)
            try:
                async with self._redis.pipeline(transaction=transaction) as pipe:
                    frames: dict[str, list[bytes]] = {}
                    waiting: dict[str, list[asyncio.Future[Any]]] = {}
                    for item, future in batch:
                        if isinstance(item, tuple):
                            channel, take = item
                            data = take()
                            if data:
                                frames.setdefault(channel, []).append(data)
                                waiting.setdefault(channel, []).append(future)
                            elif not future.done():
                                future.set_result(None)
                            continue
                        before = len(pipe.command_stack)
                        item(pipe)
                        slots.append((future, before, len(pipe.command_stack) - before, False))
                    for channel, parts in frames.items():
                        index = len(pipe.command_stack)
                        pipe.publish(channel, b"".join(parts))
                        slots.extend((future, index, 1, True) for future in waiting[channel])
                    results = await pipe.execute(raise_on_error=False) if slots else []
            except Exception as exc:  # noqa: BLE001 - every waiter gets the failure
                for _item, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for future, start, size, sent_frames in slots:
                if future.done():  # its job was cancelled meanwhile
                    continue
                part = results[start : start + size]
                error = next((r for r in part if isinstance(r, Exception)), None)
                if error is not None:
                    future.set_exception(error)
                elif sent_frames:
                    future.set_result(int(part[0]))
                else:
                    future.set_result(part)
