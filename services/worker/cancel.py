"""The signal that a job's client went away (a cancel message, or nobody left on the
api's reply channel). Like `asyncio.Event`, but whoever waits registers a callback
instead of parking a task on `wait()`: the worker runs thousands of jobs, and a task per
job only to watch for a rare cancel showed in profiles."""

from __future__ import annotations

from collections.abc import Callable


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
