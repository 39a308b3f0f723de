"""Reply frames from one job to the api process that waits for it.

At most one PUBLISH per job is in flight; chunks that arrive meanwhile are coalesced
into the next frame, so a fast upstream costs one Redis round trip per batch, never
one per token (and the worker's `Outbox` sends the frames of all its jobs together).
PUBLISH answers how many subscribers received the frame: zero means the api process
that owned the request is gone, and `gone` is set so the job stops.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from shared.messages import FrameKind, ReplyFrame


class Publisher(Protocol):
    async def publish(self, channel: str, data: bytes) -> Any: ...


class ReplyPublisher:
    def __init__(
        self,
        redis: Publisher,
        channel: str,
        request_id: str,
        generation: int = 1,
        *,
        gone: asyncio.Event | None = None,
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._request_id = request_id
        self._generation = generation
        self._seq = 0
        self._buffer = bytearray()
        self._pump_task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._next_meta: dict[str, Any] | None = None
        self.listener_gone = gone if gone is not None else asyncio.Event()

    def push(self, data: bytes, meta: dict[str, Any] | None = None) -> None:
        """Queue SSE bytes for the client; sent with whatever else is pending.

        `meta` rides on the frame that carries these bytes (the first frame's sets headers).
        """
        self._buffer += data
        if meta:
            self._next_meta = meta
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while self._buffer:
                payload = bytes(self._buffer)
                self._buffer.clear()
                meta, self._next_meta = self._next_meta, None
                await self._publish(FrameKind.CHUNKS, payload, meta)
        except Exception as exc:  # surfaced by finish(); the stream loop keeps going
            self._error = exc

    async def _publish(self, kind: FrameKind, payload: bytes, meta: dict[str, Any] | None) -> None:
        frame = ReplyFrame(
            request_id=self._request_id,
            seq=self._seq,
            kind=kind,
            payload=payload,
            meta=meta or {},
            generation=self._generation,
        )
        self._seq += 1
        receivers = await self._redis.publish(self._channel, frame.encode())
        if receivers == 0:
            self.listener_gone.set()

    async def finish(self, kind: FrameKind, payload: bytes, meta: dict[str, Any]) -> None:
        """Send the last frame, after everything pushed before it, in order."""
        if self._pump_task is not None:
            await self._pump_task
        if self._error is not None:
            raise self._error
        pending = bytes(self._buffer)
        self._buffer.clear()
        if kind is FrameKind.ERROR:
            # An error frame carries a JSON envelope, not SSE: chunks before it go on their own.
            if pending:
                await self._publish(FrameKind.CHUNKS, pending, None)
            await self._publish(kind, payload, meta)
        else:
            await self._publish(kind, pending + payload, meta)

    async def abandon(self) -> None:
        """Stop sending: wait for a frame in flight so nothing is published after the end."""
        if self._pump_task is not None and not self._pump_task.done():
            self._pump_task.cancel()
            try:
                await self._pump_task
            except BaseException:
                pass
        self._buffer.clear()
