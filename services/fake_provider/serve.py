"""One chat request, whatever its wire: record, authenticate, decide, then play the plan.

Playing is the same for every format: a hang waits for the client to leave; an error
status is answered at once; a JSON answer waits as long as its stream would have taken
(and `drop_after` cuts the connection instead); a stream sends its head after `ttft_ms`,
then one unit per `chunk_delay_ms`, and is cut by `drop_after` or ended early by the
wire's error event after `error_event_after` units.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiohttp import web

from services.fake_provider.behaviour import BadRequest, Plan, decide
from services.fake_provider.script import Step
from services.fake_provider.state import STATE, State
from services.fake_provider.wires import Stream, Wire

# Request headers and query parameters that carry credentials: never recorded.
_SECRET_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key"})
_SECRET_QUERY = frozenset({"key"})


async def handle(request: web.Request, wire: Wire) -> web.StreamResponse:
    state = request.app[STATE]
    raw = await request.read()
    body: Any
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    credential = wire.credential(request)
    _record(state, request, wire, body, raw, bool(credential))
    if state.config.require_auth and not credential:
        return wire.unauthorized()
    try:
        ask = wire.parse(request, body)
        plan = decide(ask, base=state.base_step, script=state.script, split=state.split)
    except BadRequest as exc:
        return wire.error(400, exc.message, param=exc.param)

    step = plan.step
    if step.hang:
        await _hang(request, state)
        return web.Response(status=504)  # only reached at shutdown; the client is gone
    if plan.failed:
        return wire.error(
            step.status or 500, code=step.code, retry_after_s=step.retry_after, model=ask.model
        )
    if ask.stream:
        return await _play_stream(request, state, step, wire.stream(ask, plan))
    return await _play_answer(request, state, step, plan, wire.answer(ask, plan))


def _record(
    state: State, request: web.Request, wire: Wire, body: Any, raw: bytes, has_auth: bool
) -> None:
    # str(): header names are `istr`, which orjson refuses as keys.
    headers = {str(k): v for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS}
    call: dict[str, Any] = {
        "wire": wire.name,
        "method": request.method,
        "path": request.path,
        "headers": headers,
        "has_auth": has_auth,
        "body": body if body is not None else raw.decode("utf-8", "replace"),
    }
    model = wire.url_model(request)
    if model is None and isinstance(body, dict) and isinstance(body.get("model"), str):
        model = body["model"]
    call["model"] = model
    if request.query_string:
        call["query"] = {k: v for k, v in request.query.items() if k not in _SECRET_QUERY}
    state.calls.append(call)


async def pause(state: State, delay_ms: int) -> None:
    """Sleep, but wake at server shutdown."""
    if delay_ms > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_ms / 1000):
                await state.shutdown.wait()


async def _hang(request: web.Request, state: State) -> None:
    # The runner cancels this handler when the client disconnects (handler_cancellation);
    # polling the transport covers runners configured without it.
    while not state.shutdown.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await pause(state, 200)


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes what was written, then FIN: the body is cut


async def _play_answer(
    request: web.Request, state: State, step: Step, plan: Plan, answer: web.Response
) -> web.StreamResponse:
    # The whole answer takes as long as its stream would have.
    units = plan.completion_tokens
    delay_ms = (step.ttft_ms or 0) + (step.chunk_delay_ms or 0) * max(units - 1, 0)
    await pause(state, delay_ms)
    if step.drop_after is not None:
        _abort(request)
        return web.Response(status=502)  # never reaches the client
    return answer


async def _play_stream(
    request: web.Request, state: State, step: Step, stream: Stream
) -> web.StreamResponse:
    resp = web.StreamResponse(headers=stream.headers)
    units = stream.units
    delay_ms = step.chunk_delay_ms or 0
    try:
        await resp.prepare(request)
        await pause(state, step.ttft_ms or 0)
        # Events wait here until a pause or the end, so an undelayed stream is one write.
        pending = [stream.head]
        for i in range(len(units) + 1):
            if step.drop_after == i:
                await resp.write(b"".join(pending))
                _abort(request)
                return resp
            if step.error_event_after == i:
                pending.append(stream.error)
                await resp.write(b"".join(pending))
                await resp.write_eof()
                return resp
            if i == len(units):
                break
            if i > 0 and delay_ms > 0:
                await resp.write(b"".join(pending))
                pending.clear()
                await pause(state, delay_ms)
            pending.append(units[i])
        pending.append(stream.tail)
        await resp.write(b"".join(pending))
        await resp.write_eof()
    except ConnectionError:
        pass  # the client went away mid-stream; nothing left to tell it
    return resp
