"""Relay a job's reply frames to the client, as one JSON body or as SSE.

Frames carry sequence numbers; a gap, a broken subscription or silence past the
request's deadline ends the request with a clean OpenAI-style error, never a hang. If
the client goes away first (aiohttp cancels the handler), the workers are told on
`gw:cancel` so the upstream call stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from services.api.replies import FrameQueue
from shared.errors import GatewayError, GatewayTimeout, ServiceUnavailable, error_from_dict
from shared.messages import FrameKind, ReplyFrame
from shared.money import format_usd
from shared.redis import keys

import orjson

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger("api.relay")

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_background: set[asyncio.Task[Any]] = set()


# Put on a request's queue when its deadline passes, to wake a reader waiting for frames.
_DEADLINE = ReplyFrame(request_id="", seq=-1, kind=FrameKind.ERROR)
_YEAR_S = 365 * 86400


class FrameReader:
    """Reads one request's frames in order, enforcing sequence and deadline.

    The deadline is one timer per request, not a timeout per frame (a stream has many):
    it wakes a reader waiting on an empty queue, and a busy reader checks the clock.
    `close()` cancels it.
    """

    def __init__(self, queue: FrameQueue, deadline_ms: int) -> None:
        self._queue = queue
        self._deadline_ms = deadline_ms
        self._expected_seq = 0
        self._generation = 0
        self.delivered = False  # something reached the client
        # The worker sent the job's last frame (answer, end of stream or its own error):
        # the job is over, and there is nothing upstream left to cancel.
        self.job_ended = False
        self._timer = self._arm()

    def _arm(self) -> asyncio.TimerHandle:
        remaining_s = (self._deadline_ms - time.time_ns() // 1_000_000) / 1000
        return asyncio.get_running_loop().call_later(min(max(remaining_s, 0), _YEAR_S), self._expire)

    def _expire(self) -> None:
        # Refused when full: then the reader is not waiting, and sees the clock next time.
        self._queue.offer(_DEADLINE)

    def close(self) -> None:
        self._timer.cancel()

    async def next(self) -> ReplyFrame:
        while True:
            if self._deadline_ms <= time.time_ns() // 1_000_000:
                raise GatewayTimeout("The request timed out waiting for the provider.")
            if not self._queue.empty():
                frame = self._queue.get_nowait()
            else:
                frame = await self._queue.get()
            if frame is _DEADLINE:
                # Timers may fire a little early by the wall clock: wait again if so.
                self._timer = self._arm()
                continue
            if frame is None:
                raise ServiceUnavailable("The gateway lost its reply channel; retry the request.")
            if frame.generation < self._generation:
                continue  # a late frame from a run that another worker took over
            if frame.generation > self._generation:
                if self.delivered and self._generation:
                    raise ServiceUnavailable("The worker serving this stream stopped; retry the request.")
                self._generation = frame.generation
                self._expected_seq = 0
            if frame.seq != self._expected_seq:
                raise ServiceUnavailable("Part of the reply was lost; retry the request.")
            self._expected_seq += 1
            self.job_ended = frame.kind is not FrameKind.CHUNKS
            return frame


def answer_headers(meta: Mapping[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    if "cost_nusd" in meta:
        headers["x-gateway-cost"] = format_usd(int(meta["cost_nusd"]))
    if meta.get("provider"):
        headers["x-gateway-provider"] = str(meta["provider"])
    if meta.get("attempts"):
        headers["x-gateway-attempts"] = str(meta["attempts"])
    return headers


def frame_error(frame: ReplyFrame) -> GatewayError:
    error = error_from_dict(int(frame.meta.get("status", 502)), orjson.loads(frame.payload))
    error.headers = dict(frame.meta.get("headers") or {})
    return error


async def relay_json(
    reader: FrameReader, headers: dict[str, str]
) -> tuple[web.Response, Mapping[str, Any]]:
    frame = await reader.next()
    if frame.kind is FrameKind.ERROR:
        raise frame_error(frame)
    if frame.kind is not FrameKind.RESPONSE:
        raise ServiceUnavailable("The worker sent an unexpected reply.")
    headers.update(answer_headers(frame.meta))
    reader.delivered = True
    return web.Response(body=frame.payload, content_type="application/json", headers=headers), frame.meta


def stream_error_event(error: Mapping[str, Any], *, completion_id: str, model: str) -> bytes:
    """The last event of a stream that failed after content was sent: a chunk with
    `finish_reason: "error"` (as OpenRouter sends) carrying OpenAI's error object, which
    the OpenAI SDKs raise as `APIError`."""
    chunk = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}],
        "error": error,
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def relay_sse(
    request: web.Request,
    reader: FrameReader,
    headers: dict[str, str],
    *,
    completion_id: str = "",
    model: str = "",
) -> tuple[web.StreamResponse, Mapping[str, Any]]:
    first = await reader.next()
    if first.kind is FrameKind.ERROR:
        raise frame_error(first)  # nothing sent yet: a plain HTTP error
    headers.update(answer_headers({k: v for k, v in first.meta.items() if k != "cost_nusd"}))
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
    await response.prepare(request)
    frame = first
    while True:
        if frame.kind is FrameKind.ERROR:
            error = orjson.loads(frame.payload).get("error") or {}
            await response.write(stream_error_event(error, completion_id=completion_id, model=model))
            meta = frame.meta
            break
        if frame.payload:
            await response.write(frame.payload)
            reader.delivered = True
        if frame.kind is FrameKind.DONE:
            meta = frame.meta
            break
        try:
            frame = await reader.next()
        except GatewayError as exc:
            error = exc.to_dict()["error"]
            await response.write(stream_error_event(error, completion_id=completion_id, model=model))
            meta = {"status": exc.http_status, "error": exc.code}
            break
    await response.write_eof()
    return response, meta


def cancel_upstream(redis: Redis, request_id: str, deadline_ms: int) -> None:
    """Tell the workers this request's client is gone, in the background.

    The cancel is both published (workers listening now stop the job at once) and kept
    as a mark until the job's deadline (a worker whose subscription was down when it was
    published finds it when it subscribes again). While Redis is away the api keeps
    trying until the deadline: the request that lost its reply channel in a Redis restart
    is exactly the one whose cancel would otherwise be lost, leaving its worker to finish
    and bill a whole answer the client never got.
    """
    task = asyncio.create_task(_publish_cancel(redis, request_id, deadline_ms))
    _background.add(task)
    task.add_done_callback(_background.discard)


CANCEL_RETRY_FIRST_S = 0.1
CANCEL_RETRY_MAX_S = 1.0
# Kept a little past the deadline: a worker checks marks up to its next heartbeat.
_CANCEL_MARK_SLACK_MS = 60_000


async def _publish_cancel(redis: Redis, request_id: str, deadline_ms: int) -> None:
    delay_s = CANCEL_RETRY_FIRST_S
    failures = 0
    while True:
        now_ms = time.time_ns() // 1_000_000
        try:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.set(
                    keys.cancel_mark(request_id),
                    b"1",
                    px=max(deadline_ms - now_ms, 0) + _CANCEL_MARK_SLACK_MS,
                )
                pipe.publish(keys.CANCEL_CHANNEL, request_id)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis away: retried until the deadline
            failures += 1
            if failures == 1:
                log.warning("cancel_publish_failed", error=type(exc).__name__, retrying=True)
            if now_ms + delay_s * 1000 >= deadline_ms:
                log.warning("cancel_publish_abandoned", error=type(exc).__name__, tries=failures)
                return
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, CANCEL_RETRY_MAX_S)
            continue
        if failures:
            log.info("cancel_published", tries=failures + 1)
        return
