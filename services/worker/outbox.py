"""Everything this worker sends to Redis for its jobs, sent together.

Jobs submit reply frames and items built together (finished jobs: their events, acks and
health samples); the outbox sends all that were submitted during one turn of the event
loop in one pipeline, wrapped in MULTI/EXEC when it holds more than reply frames, while
the next turn's gather behind it. Reply frames bound for the same api process travel in
one PUBLISH, whichever requests they belong to; items submitted under one `build_all`
are built by one call, so that their acks and samples share commands too. Fifty streams
each sending a chunk every few milliseconds then cost a few Redis commands per tick
instead of fifty, and each job still sees its own results in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

T = TypeVar("T")
BuildAll = Callable[["Pipeline", list[Any]], None]
# Called when the pipeline is built, so that whatever was queued until then goes along:
# the encoded frames to publish (b"" when there is nothing left to send).
TakeFrames = Callable[[], bytes]


class _Frames(NamedTuple):
    channel: str
    take: TakeFrames


class _Together(NamedTuple):
    build_all: BuildAll
    item: Any


class Outbox:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._queued: list[tuple[_Frames | _Together, asyncio.Future[Any]]] = []
        self._flushing: asyncio.Task[None] | None = None

    def submit_together(
        self, build_all: Callable[[Pipeline, list[T]], None], item: T
    ) -> asyncio.Future[None]:
        """Queue `item`; `build_all(pipe, items)` is called once per flush with every item
        queued under it, in submission order. The future fails if any of the commands
        built for them failed (they succeed or fail together)."""
        return self._queue(_Together(build_all, item))

    def send_frames(self, channel: str, take: TakeFrames) -> asyncio.Future[int | None]:
        """Publish what `take()` returns on `channel`, with the other frames for that
        channel; the future gets how many subscribers received it (None: nothing sent)."""
        return self._queue(_Frames(channel, take))

    def _queue(self, item: _Frames | _Together) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((item, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            # (future, first result index, result count, whether it gets its channel's
            # PUBLISH answer; else None, for an item built together).
            slots: list[tuple[asyncio.Future[Any], int, int, bool]] = []
            # Reply frames alone need no MULTI/EXEC: a PUBLISH is atomic on its own.
            transaction = any(isinstance(item, _Together) for item, _future in batch)
            try:
                async with self._redis.pipeline(transaction=transaction) as pipe:
                    frames: dict[str, list[bytes]] = {}
                    waiting: dict[str, list[asyncio.Future[Any]]] = {}
                    together: dict[BuildAll, list[tuple[Any, asyncio.Future[Any]]]] = {}
                    for item, future in batch:
                        if isinstance(item, _Together):
                            together.setdefault(item.build_all, []).append((item.item, future))
                            continue
                        data = item.take()
                        if data:
                            frames.setdefault(item.channel, []).append(data)
                            waiting.setdefault(item.channel, []).append(future)
                        elif not future.done():
                            future.set_result(None)
                    for build_all, entries in together.items():
                        before = len(pipe.command_stack)
                        build_all(pipe, [entry for entry, _future in entries])
                        size = len(pipe.command_stack) - before
                        slots.extend((future, before, size, False) for _e, future in entries)
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
            for future, start, size, published in slots:
                if future.done():  # its job was cancelled meanwhile
                    continue
                part = results[start : start + size]
                error = next((r for r in part if isinstance(r, Exception)), None)
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(int(part[0]) if published else None)
