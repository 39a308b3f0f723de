"""Everything this worker sends to Redis for its jobs, sent together.

Jobs submit commands (a reply frame's PUBLISH, a finished job's XADD + XACK + health
samples); the outbox sends all that were submitted during one turn of the event loop in
one pipeline, wrapped in MULTI/EXEC, while the next turn's commands gather behind it.
Fifty streams each sending a chunk every few milliseconds then cost a few Redis round
trips per tick instead of fifty, and each job still sees its own results in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

Build = Callable[["Pipeline"], None]


class Outbox:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._queued: list[tuple[Build, asyncio.Future[list[Any]]]] = []
        self._flushing: asyncio.Task[None] | None = None

    def submit(self, build: Build) -> asyncio.Future[list[Any]]:
        """Queue the commands `build` adds to a pipeline; the future gets their results."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queued.append((build, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return future

    async def publish(self, channel: str, data: bytes) -> int:
        """PUBLISH through the outbox: how many subscribers received it."""
        results = await self.submit(lambda pipe: pipe.publish(channel, data))
        return int(results[0])

    async def _flush(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            sizes = []
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    for build, _future in batch:
                        before = len(pipe.command_stack)
                        build(pipe)
                        sizes.append(len(pipe.command_stack) - before)
                    results = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # noqa: BLE001 - every waiter gets the failure
                for _build, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for (_build, future), size in zip(batch, sizes, strict=True):
                part = results[start : start + size]
                start += size
                if future.done():  # its job was cancelled meanwhile
                    continue
                error = next((r for r in part if isinstance(r, Exception)), None)
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(part)
