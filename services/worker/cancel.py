"""The signal that a job's client went away (a cancel message, or nobody left on the
api's reply channel). Like `asyncio.Event`, but whoever waits registers a callback
instead of parking a task on `wait()`: the worker runs thousands of jobs, and a task per
job only to watch for a rare cancel showed in profiles."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from shared.redis import keys

if TYPE_CHECKING:
    from redis.asyncio import Redis


class CancelSignal:
    __slots__ = ("_callbacks", "_set")

    def __init__(self) -> None:
        self._set = False
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def is_set(self) -> bool:
        return self._set

    def on_set(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the signal is set (now, if it already is)."""
        if self._set:
            callback()
        else:
            self._callbacks.append(callback)


async def apply_cancel_marks(redis: Redis, jobs: Sequence[tuple[str, CancelSignal]]) -> int:
    """Set the signal of each (request id, signal) whose request the api marked cancelled.

    Pub/sub drops a cancel published while a worker was not subscribed (Redis restarting,
    the worker reconnecting); the api also leaves a mark, which the worker reads on every
    (re)subscription and heartbeat. One MGET for all jobs; returns how many were set.
    """
    if not jobs:
        return 0
    marks = await redis.mget([keys.cancel_mark(request_id) for request_id, _signal in jobs])
    found = 0
    for (_request_id, signal), mark in zip(jobs, marks, strict=True):
        if mark is not None and not signal.is_set():
            signal.set()
            found += 1
    return found
