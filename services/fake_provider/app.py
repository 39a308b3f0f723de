"""The fake provider: an OpenAI-compatible upstream for demo mode, tests and benchmarks.

Endpoints:

    POST   /v1/chat/completions   OpenAI wire format, JSON or SSE (`stream: true`)
    GET    /v1/models             OpenAI model list
    GET    /health                {"status": "ok"}
    POST   /_fake/script          queue steps (JSON list), see `script.py`
    GET    /_fake/script          the steps still queued
    DELETE /_fake/script          drop them
    GET    /_fake/calls           recorded chat requests: path, headers (no Authorization), body
    DELETE /_fake/calls           forget them

A step or a `[[fake:...]]` directive in the last user message turns one request into an
error status, a slow or cut stream, a mid-stream error event, or a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from services.fake_provider import wire
from services.fake_provider.script import Script, ScriptError, Step, parse_steps

DEFAULT_REPLY = (
    "Hello from the gateway's demo provider. "
    "Your request made it through the queue, a worker and back."
)
DEFAULT_MODELS = ("fake-model",)
MAX_RECORDED_CALLS = 10_000  # a benchmark must not grow the server without bound
MAX_BODY_BYTES = 64 * 1024 * 1024  # base64 images travel in the body


@dataclass(frozen=True, slots=True)
class FakeConfig:
    ttft_ms: int = 0
    chunks: int = 8
    chunk_delay_ms: int = 0
    reply: str = DEFAULT_REPLY
    require_auth: bool = True
    models: tuple[str, ...] = DEFAULT_MODELS


@dataclass(slots=True)
class _State:
    config: FakeConfig
    script: Script
    calls: deque[dict[str, Any]]
    shutdown: asyncio.Event
    pieces: dict[tuple[str, int], tuple[str, ...]]

    def split(self, text: str, count: int) -> tuple[str, ...]:
        key = (text, count)
        pieces = self.pieces.get(key)
        if pieces is None:
            if len(self.pieces) > 256:  # scripts may vary the text; keep the cache small
                self.pieces.clear()
            pieces = self.pieces[key] = wire.split_reply(text, count)
        return pieces


STATE = web.AppKey("fake_provider_state", _State)


def create_app(config: FakeConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE] = _State(
        config=config or FakeConfig(),
        script=Script(),
        calls=deque(maxlen=MAX_RECORDED_CALLS),
        shutdown=asyncio.Event(),
        pieces={},
    )
    app.on_shutdown.append(_on_shutdown)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_post("/_fake/script", push_script)
    app.router.add_get("/_fake/script", show_script)
    app.router.add_delete("/_fake/script", clear_script)
    app.router.add_get("/_fake/calls", list_calls)
    app.router.add_delete("/_fake/calls", clear_calls)
    return app


async def _on_shutdown(app: web.Application) -> None:
    # Hanging and slow handlers wait on this, so a stopping server does not wait for them.
    app[STATE].shutdown.set()


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(
    status: int,
    message: str | None = None,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        body=wire.error_body(status, message=message, code=code, param=param),
        status=status,
        content_type="application/json",
        headers=headers,
    )


# -- control API ---------------------------------------------------------------------------


async def push_script(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        steps = parse_steps(orjson.loads(await request.read()))
    except (orjson.JSONDecodeError, ScriptError) as exc:
        return _error(400, f"bad script: {exc}")
    state.script.push(steps)
    return _json({"queued": len(steps), "pending": len(state.script)})


async def show_script(request: web.Request) -> web.Response:
    return _json(request.app[STATE].script.snapshot())


async def clear_script(request: web.Request) -> web.Response:
    return _json({"cleared": request.app[STATE].script.clear()})


async def list_calls(request: web.Request) -> web.Response:
    return _json(list(request.app[STATE].calls))


async def clear_calls(request: web.Request) -> web.Response:
    calls = request.app[STATE].calls
    count = len(calls)
    calls.clear()
    return _json({"cleared": count})


async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def list_models(request: web.Request) -> web.Response:
    models = request.app[STATE].config.models
    return _json(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
                for m in models
            ],
        }
    )


# -- chat completions ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    """One validated chat request."""

    model: str
    messages: list[Any]
    stream: bool
    include_usage: bool
    max_tokens: int | None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    raw = await request.read()
    body: Any
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    _record(state, request, body, raw)

    if state.config.require_auth and not _bearer(request):
        return _error(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code=None,
        )
    if body is None:
        return _error(400, "We could not parse the JSON body of your request.", code=None)
    try:
        call = _validate(body)
        step = _plan(state, call)
    except _BadRequest as exc:
        return _error(400, exc.message, param=exc.param)

    if step.hang:
        await _hang(request, state)
        return web.Response(status=504)  # only reached at shutdown; the client is gone
    if step.status is not None and step.status != 200:
        return _scripted_error(step, call)

    pieces = state.split(step.reply or "", step.chunks if step.chunks is not None else 1)
    finish_reason = "stop"
    if call.max_tokens is not None and call.max_tokens < len(pieces):
        pieces = pieces[: call.max_tokens]
        finish_reason = "length"
    reply = _Reply(
        completion_id="chatcmpl-fake" + os.urandom(12).hex(),
        created=int(time.time()),
        pieces=pieces,
        finish_reason=finish_reason,
        prompt_tokens=wire.count_prompt_tokens(call.messages),
    )
    if call.stream:
        return await _stream(request, state, step, call, reply)
    return await _answer(request, state, step, call, reply)


@dataclass(frozen=True, slots=True)
class _Reply:
    """The answer to one request, however it is delivered."""

    completion_id: str
    created: int
    pieces: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int

    @property
    def usage(self) -> dict[str, Any]:
        return wire.usage(self.prompt_tokens, len(self.pieces))


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _bearer(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _record(state: _State, request: web.Request, body: Any, raw: bytes) -> None:
    # str(): header names are `istr`, which orjson refuses as keys.
    headers = {str(k): v for k, v in request.headers.items() if k.lower() != "authorization"}
    state.calls.append(
        {
            "method": request.method,
            "path": request.path,
            "headers": headers,
            "has_auth": bool(_bearer(request)),
            "body": body if body is not None else raw.decode("utf-8", "replace"),
        }
    )


def _validate(body: Any) -> _Call:
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array.", "messages")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _BadRequest("'stream' must be a boolean.", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _BadRequest("'stream_options' must be an object.", "stream_options")
    max_tokens = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _BadRequest(f"'{name}' must be a positive integer.", name)
        max_tokens = value
        break
    return _Call(
        model=model,
        messages=messages,
        stream=bool(stream),
        include_usage=bool(stream and options and options.get("include_usage") is True),
        max_tokens=max_tokens,
    )


def _plan(state: _State, call: _Call) -> Step:
    """The server's config, overlaid by the next queued step, overlaid by directives."""
    config = state.config
    step = Step(
        ttft_ms=config.ttft_ms,
        chunks=config.chunks,
        chunk_delay_ms=config.chunk_delay_ms,
        reply=config.reply,
    )
    queued = state.script.take(call.model)
    if queued is not None:
        step = queued.over(step)
    last_user = next(
        (m for m in reversed(call.messages) if isinstance(m, dict) and m.get("role") == "user"),
        None,
    )
    if last_user is not None:
        try:
            directives = Step.from_directives(wire.message_text(last_user))
        except ScriptError as exc:
            raise _BadRequest(str(exc), "messages") from exc
        if directives is not None:
            step = directives.over(step)
    return step


def _scripted_error(step: Step, call: _Call) -> web.Response:
    status = step.status or 500
    headers: dict[str, str] = {}
    retry_after = step.retry_after
    if retry_after is None and status == 429:
        retry_after = 1.0
    if retry_after is not None:
        headers["retry-after"] = (
            str(int(retry_after)) if retry_after.is_integer() else str(retry_after)
        )
    message = None
    if status == 404:
        message = f"The model `{call.model}` does not exist or you do not have access to it."
    return _error(status, message, code=step.code, headers=headers)


async def _pause(state: _State, delay_ms: int) -> None:
    if delay_ms > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_ms / 1000):
                await state.shutdown.wait()


async def _hang(request: web.Request, state: _State) -> None:
    # The runner cancels this handler when the client disconnects (handler_cancellation);
    # polling the transport covers runners configured without it.
    while not state.shutdown.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await _pause(state, 200)


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes what was written, then FIN: the chunked body is cut


async def _answer(
    request: web.Request, state: _State, step: Step, call: _Call, reply: _Reply
) -> web.StreamResponse:
    # The whole answer takes as long as its stream would have.
    delay_ms = (step.ttft_ms or 0) + (step.chunk_delay_ms or 0) * max(len(reply.pieces) - 1, 0)
    await _pause(state, delay_ms)
    if step.drop_after is not None:
        _abort(request)
        return web.Response(status=502)  # never reaches the client
    body = wire.completion(
        completion_id=reply.completion_id,
        created=reply.created,
        model=call.model,
        content="".join(reply.pieces),
        finish_reason=reply.finish_reason,
        usage_obj=reply.usage,
    )
    return web.Response(
        body=body, content_type="application/json", headers={"x-request-id": reply.completion_id}
    )


async def _stream(
    request: web.Request, state: _State, step: Step, call: _Call, reply: _Reply
) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "x-request-id": reply.completion_id,
        }
    )
    writer = wire.ChunkWriter(
        completion_id=reply.completion_id,
        created=reply.created,
        model=call.model,
        include_usage=call.include_usage,
    )
    pieces = reply.pieces
    delay_ms = step.chunk_delay_ms or 0
    try:
        await resp.prepare(request)
        await _pause(state, step.ttft_ms or 0)
        # Events wait here until a pause or the end, so an undelayed stream is one write.
        pending = [writer.role()]
        for i in range(len(pieces) + 1):
            if step.drop_after == i:
                await resp.write(b"".join(pending))
                _abort(request)
                return resp
            if step.error_event_after == i:
                pending.append(wire.error_event("The fake provider failed mid-stream."))
                await resp.write(b"".join(pending))
                await resp.write_eof()
                return resp
            if i == len(pieces):
                break
            if i > 0 and delay_ms > 0:
                await resp.write(b"".join(pending))
                pending.clear()
                await _pause(state, delay_ms)
            pending.append(writer.content(pieces[i]))
        pending.append(writer.finish(reply.finish_reason))
        if call.include_usage:
            pending.append(writer.usage(reply.usage))
        pending.append(wire.DONE_EVENT)
        await resp.write(b"".join(pending))
        await resp.write_eof()
    except ConnectionError:
        pass  # the client went away mid-stream; nothing left to tell it
    return resp
