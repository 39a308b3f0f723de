"""The worker's I/O with providers: one pooled HTTP session, and the two calls.

Adapters only translate; everything that can go wrong on the wire is mapped here into the
error tree, `raise ... from exc`:

    connect timeout, no first byte, stream idle too long -> Retryable..., code "timeout"
    refused/reset, body cut, body ends unfinished       -> Retryable..., code "connection_error"
    non-2xx status                                       -> adapter.classify_error(...)

Timeouts: `connect_s` bounds opening the connection; `first_byte_s` bounds the time from
the start of the call to the response headers and, for a stream, to its first event (the
provider's time to first token); `idle_s` bounds each later gap between stream events and
the reading of a non-streaming body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import orjson

from services.worker.providers.base import (
    ChatRequest,
    Completion,
    HttpCall,
    ProviderAdapter,
    SseEvent,
    StreamDelta,
    StreamParser,
    Target,
)
from services.worker.sse import iter_sse
from shared.errors import ProviderError, RetryableProviderError

ERROR_BODY_LIMIT_BYTES = 1 << 20
RESPONSE_BODY_LIMIT_BYTES = 64 << 20


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float
    first_byte_s: float
    idle_s: float
    # aiohttp's per-call timeouts, built once: the connection phases only.
    client: aiohttp.ClientTimeout = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "client",
            aiohttp.ClientTimeout(total=None, connect=self.connect_s, sock_connect=self.connect_s),
        )


def _json_dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


def create_client_session(*, limit_per_host: int = 0) -> aiohttp.ClientSession:
    """The worker process's one session: pooled keep-alive connections to every provider.

    No overall connection limit: the worker's own concurrency setting bounds the calls in
    flight, and a pool limit would only queue them invisibly behind it.
    """
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=limit_per_host,
        ttl_dns_cache=300,
        use_dns_cache=True,
        keepalive_timeout=30.0,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # Each call sets its own phases' timeouts; no total bound on a long stream.
        timeout=aiohttp.ClientTimeout(total=None),
        json_serialize=_json_dumps,
        auto_decompress=True,
        # Cookies a provider sets (load balancers do) must not ride on other users' calls;
        # and filtering a jar on every request costs time.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def _timeout(provider: str, what: str) -> RetryableProviderError:
    return RetryableProviderError(
        f"{provider}: {what}", status=504, code="timeout", provider=provider
    )


def _connection_error(provider: str, exc: BaseException) -> RetryableProviderError:
    detail = type(exc).__name__
    text = str(exc)
    if text:
        detail = f"{detail}: {text}"
    return RetryableProviderError(
        f"{provider}: connection error ({detail})", code="connection_error", provider=provider
    )


async def _open(
    session: aiohttp.ClientSession,
    call: HttpCall,
    target: Target,
    timeouts: Timeouts,
    deadline: float,
) -> aiohttp.ClientResponse:
    """Send the request and wait for the response headers, by `deadline` (loop time)."""
    try:
        async with asyncio.timeout_at(deadline):
            return await session.request(
                call.method,
                call.url,
                data=call.body,
                headers=dict(call.headers),
                timeout=timeouts.client,
                allow_redirects=False,
            )
    except aiohttp.ConnectionTimeoutError as exc:
        raise _timeout(target.name, f"no connection within {timeouts.connect_s:g}s") from exc
    except TimeoutError as exc:  # asyncio.timeout, or an aiohttp socket timeout
        raise _timeout(target.name, f"no response within {timeouts.first_byte_s:g}s") from exc
    except aiohttp.ClientError as exc:
        raise _connection_error(target.name, exc) from exc


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Up to `limit` bytes of the body, and whether the body was longer."""
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(parts)[:limit], True
    return b"".join(parts), False


async def _raise_for_status(
    resp: aiohttp.ClientResponse, adapter: ProviderAdapter, target: Target, timeouts: Timeouts
) -> None:
    if 200 <= resp.status < 300:
        return
    try:
        async with asyncio.timeout(timeouts.idle_s):
            body, _ = await _read_bounded(resp, ERROR_BODY_LIMIT_BYTES)
    except (TimeoutError, aiohttp.ClientError):
        body = b""  # the status alone still classifies the failure
    raise adapter.classify_error(resp.status, resp.headers, body, target.name)


async def complete(
    session: aiohttp.ClientSession,
    adapter: ProviderAdapter,
    target: Target,
    req: ChatRequest,
    timeouts: Timeouts,
) -> Completion:
    """One non-streaming call, parsed into a `Completion`."""
    call = adapter.build_request(req, target)
    deadline = asyncio.get_running_loop().time() + timeouts.first_byte_s
    resp = await _open(session, call, target, timeouts, deadline)
    read_whole = False
    try:
        await _raise_for_status(resp, adapter, target, timeouts)
        try:
            async with asyncio.timeout(timeouts.idle_s):
                body, too_long = await _read_bounded(resp, RESPONSE_BODY_LIMIT_BYTES)
        except TimeoutError as exc:
            raise _timeout(target.name, f"response body stalled over {timeouts.idle_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise _connection_error(target.name, exc) from exc
        read_whole = not too_long
        if too_long:
            raise RetryableProviderError(
                f"{target.name}: response body over {RESPONSE_BODY_LIMIT_BYTES} bytes",
                code="bad_response",
                provider=target.name,
                upstream_status=resp.status,
            )
        try:
            return adapter.parse_response(body)
        except ProviderError as exc:
            exc.provider = target.name
            exc.upstream_status = resp.status
            raise
    finally:
        # A body read to its end lets the connection back into the pool.
        if read_whole:
            resp.release()
        else:
            resp.close()


async def stream(
    session: aiohttp.ClientSession,
    adapter: ProviderAdapter,
    target: Target,
    req: ChatRequest,
    timeouts: Timeouts,
) -> AsyncGenerator[StreamDelta, None]:
    """One streaming call: the upstream's events, translated, as they arrive.

    Ends normally only when the adapter saw the upstream's end marker (or, for OpenAI-style
    streams, the body ended after every choice got its finish reason). Leaving the loop
    early or cancelling the task closes the upstream connection, so the provider stops
    generating (and billing) for a client that is gone.
    """
    call = adapter.build_request(req, target)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeouts.first_byte_s
    resp = await _open(session, call, target, timeouts, deadline)
    clean = False
    events: AsyncGenerator[SseEvent, None] | None = None
    watch: _EventWatch | None = None
    try:
        await _raise_for_status(resp, adapter, target, timeouts)
        parser = adapter.stream_parser()
        events = iter_sse(resp.content)
        watch = _EventWatch(events, target, timeouts, deadline)
        while not parser.finished:
            event = await watch.next()
            if event is None:
                if _ended_cleanly(parser):
                    break
                raise RetryableProviderError(
                    f"{target.name}: stream ended before its end marker",
                    code="connection_error",
                    provider=target.name,
                    upstream_status=resp.status,
                )
            try:
                deltas = parser.feed(event)
            except ProviderError as exc:
                exc.provider = target.name
                raise
            for delta in deltas:
                yield delta
        clean = True
    finally:
        if watch is not None:
            watch.close()
        # After [DONE] the body is normally complete and the connection goes back to the
        # pool; on any other exit (error, consumer gone, cancellation) it is closed.
        if clean:
            resp.release()
        else:
            resp.close()
        if events is not None:
            await events.aclose()


class _EventWatch:
    """Reads a stream's events with its first-event deadline and its idle timeout.

    One timer per stream, moved only when it fires (to the last event's time plus the
    idle timeout), instead of a timeout armed and disarmed around every event: a long
    stream has thousands. When it expires while we wait, the task is cancelled and the
    wait ends in a timeout error, as `asyncio.timeout` does; if it expires while the
    consumer holds the event, the next wait gets a whole idle period.
    """

    __slots__ = (
        "_events", "_target", "_timeouts", "_loop", "_task", "_first_deadline", "_last",
        "_handle", "_waiting", "_expired",
    )  # fmt: skip

    def __init__(
        self,
        events: AsyncIterator[SseEvent],
        target: Target,
        timeouts: Timeouts,
        first_deadline: float,
    ) -> None:
        self._events = events
        self._target = target
        self._timeouts = timeouts
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._first_deadline = first_deadline
        self._last: float | None = None  # loop time of the last event
        self._waiting = False
        self._expired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(first_deadline, self._check)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _due(self) -> float:
        return self._first_deadline if self._last is None else self._last + self._timeouts.idle_s

    def _check(self) -> None:
        self._handle = None
        due = self._due()
        now = self._loop.time()
        if now < due:
            self._handle = self._loop.call_at(due, self._check)
        elif not self._waiting:
            # The consumer held the last event this long, not the upstream: its next
            # wait gets a whole idle period (events may already be buffered).
            self._handle = self._loop.call_at(now + self._timeouts.idle_s, self._check)
        elif self._task is not None:
            self._expired = True
            self._task.cancel()

    def _timed_out(self) -> RetryableProviderError:
        timeouts = self._timeouts
        what = (
            f"no first event within {timeouts.first_byte_s:g}s"
            if self._last is None
            else f"stream idle for over {timeouts.idle_s:g}s"
        )
        return _timeout(self._target.name, what)

    async def next(self) -> SseEvent | None:
        """The next event, or None at the end of the body."""
        self._waiting = True
        try:
            event = await anext(self._events)
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            # Ours (and nobody else's): the timer fired while we waited.
            if self._expired and self._task is not None and self._task.uncancel() == 0:
                raise self._timed_out() from None
            raise
        except aiohttp.ClientError as exc:
            raise _connection_error(self._target.name, exc) from exc
        finally:
            self._waiting = False
        first = self._last is None
        self._last = self._loop.time()
        if first and self._handle is not None:
            # The idle timeout may end before the first-event deadline: move the timer
            # earlier this once (later moves wait until it fires).
            self._handle.cancel()
            self._handle = self._loop.call_at(self._due(), self._check)
        return event


def _ended_cleanly(parser: StreamParser) -> bool:
    # Some OpenAI-compatible servers end the body after the finish reason without
    # `[DONE]`; the OpenAI parser exposes `saw_finish_reason` for exactly this case.
    return parser.finished or parser.saw_finish_reason
