"""Reply frames from one job to the api process that waits for it.

Pushed chunks wait in a buffer until the worker's `Outbox` builds its next pipeline;
everything pushed until then leaves as one frame, so a fast upstream costs one frame
per batch, never one per token, and at most one frame per job is queued at a time.
No task per frame: the outbox takes the buffer when it sends.

PUBLISH answers how many subscribers received the frames: zero means the api process
that owned the request is gone, and `gone` is set so the job stops.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from services.worker.cancel import CancelSignal
from shared.messages import FrameKind, ReplyFrame

if TYPE_CHECKING:
    from services.worker.outbox import Outbox


class ReplyPublisher:
    def __init__(
        self,
        outbox: Outbox,
        channel: str,
        request_id: str,
        generation: int = 1,
        *,
        gone: CancelSignal | None = None,
    ) -> None:
        self._outbox = outbox
        self._channel = channel
        self._request_id = request_id
        self._generation = generation
        self._seq = 0
        self._buffer = bytearray()
        self._next_meta: dict[str, Any] | None = None
        # The last frame, once finish() was called: (kind, payload, meta).
        self._last: tuple[FrameKind, bytes, dict[str, Any]] | None = None
        self._queued: asyncio.Future[int | None] | None = None  # taken at the next flush
        self._sent: asyncio.Future[int | None] | None = None  # the latest submission
        self._error: BaseException | None = None
        self._abandoned = False
        self.listener_gone = gone if gone is not None else CancelSignal()

    def push(self, data: bytes, meta: dict[str, Any] | None = None) -> None:
        """Queue SSE bytes for the client; sent with whatever else is pending.

        `meta` rides on the frame that carries these bytes (the first frame's sets headers).
        """
        self._buffer += data
        if meta:
            self._next_meta = meta
        self._submit()

    async def finish(self, kind: FrameKind, payload: bytes, meta: dict[str, Any]) -> None:
        """Send the last frame, after everything pushed before it, in order."""
        if self._error is not None:
            raise self._error
        self._last = (kind, payload, meta)
        sent = self._submit()
        await sent
        if self._error is not None:
            raise self._error

    async def abandon(self) -> None:
        """Stop sending: wait for frames in flight so nothing is published after the end."""
        self._abandoned = True
        self._buffer.clear()
        if self._sent is not None and not self._sent.done():
            try:
                await asyncio.shield(self._sent)
            except BaseException:  # noqa: BLE001 - we only wait for it to be over
                pass

    def _submit(self) -> asyncio.Future[int | None]:
        if self._queued is None:
            future = self._outbox.send_frames(self._channel, self._take)
            future.add_done_callback(self._on_sent)
            self._queued = self._sent = future
        return self._queued

    def _take(self) -> bytes:
        """The frames due now, encoded (the outbox calls this as it builds its pipeline)."""
        self._queued = None
        if self._abandoned:
            return b""
        out = b""
        # An error frame carries a JSON envelope, not SSE: chunks before it go alone.
        if self._buffer and (self._last is None or self._last[0] is FrameKind.ERROR):
            meta, self._next_meta = self._next_meta, None
            out = self._frame(FrameKind.CHUNKS, bytes(self._buffer), meta)
            self._buffer.clear()
        if self._last is not None:
            kind, payload, meta = self._last
            if kind is not FrameKind.ERROR:
                payload = bytes(self._buffer) + payload
                self._buffer.clear()
            out += self._frame(kind, payload, meta)
        return out

    def _frame(self, kind: FrameKind, payload: bytes, meta: dict[str, Any] | None) -> bytes:
        frame = ReplyFrame(
            request_id=self._request_id,
            seq=self._seq,
            kind=kind,
            payload=payload,
            meta=meta or {},
            generation=self._generation,
        )
        self._seq += 1
        return frame.encode()

    def _on_sent(self, future: asyncio.Future[int | None]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._error = exc  # surfaced by finish(); the stream loop keeps going
        elif future.result() == 0:
            self.listener_gone.set()
