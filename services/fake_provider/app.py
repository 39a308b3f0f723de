"""The fake provider: one server speaking OpenAI, Together, Anthropic and Gemini wire formats.

Demo mode, tests and benchmarks point the gateway's `BASE_URL_<PROVIDER>` here:

    POST   /v1/chat/completions                     OpenAI: BASE_URL_OPENAI = {fake}/v1
    POST   /together/v1/chat/completions            Together: BASE_URL_TOGETHER = {fake}/together/v1
    POST   /v1/messages                             Anthropic: BASE_URL_ANTHROPIC = {fake}/v1
    POST   /v1beta/models/{model}:generateContent   Gemini: BASE_URL_GOOGLE = {fake}/v1beta
    POST   /v1beta/models/{model}:streamGenerateContent?alt=sse
    POST   /v1/models/{model}:generateContent, ...  the same (google-genai's default v1 paths)
    GET    /v1/models, /together/v1/models          OpenAI model list
    GET    /health                                  {"status": "ok"}
    POST   /_fake/script                            queue steps (JSON list), see `script.py`
    GET    /_fake/script                            the steps still queued
    DELETE /_fake/script                            drop them
    GET    /_fake/calls                             recorded chat requests, without credentials
    DELETE /_fake/calls                             forget them

What an answer says is decided once for all formats (`behaviour.py`); each format only
renders it (`wires/`). A queued step or a `[[fake:...]]` directive in the last user message
turns a request into tool calls, an error status, a slow or cut stream, a mid-stream error
event, or a hang.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from services.fake_provider.script import ScriptError, parse_steps
from services.fake_provider.serve import handle
from services.fake_provider.state import DEFAULT_MODELS, DEFAULT_REPLY, STATE, FakeConfig, State
from services.fake_provider.wires import Wire, json_response
from services.fake_provider.wires.anthropic import AnthropicWire
from services.fake_provider.wires.gemini import GEMINI_ACTIONS, GeminiWire
from services.fake_provider.wires.openai import OpenAIWire, error_body
from services.fake_provider.wires.together import TogetherWire

__all__ = ["DEFAULT_MODELS", "DEFAULT_REPLY", "STATE", "FakeConfig", "State", "create_app"]

MAX_BODY_BYTES = 64 * 1024 * 1024  # base64 images travel in the body

OPENAI = OpenAIWire()
TOGETHER = TogetherWire()
ANTHROPIC = AnthropicWire()
GEMINI = GeminiWire()


def create_app(config: FakeConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE] = State(config=config or FakeConfig())
    app.on_shutdown.append(_on_shutdown)
    app.router.add_post("/v1/chat/completions", _chat(OPENAI))
    app.router.add_post("/together/v1/chat/completions", _chat(TOGETHER))
    app.router.add_post("/v1/messages", _chat(ANTHROPIC))
    app.router.add_post("/v1beta/models/{target}", gemini)
    app.router.add_post("/v1/models/{target}", gemini)  # google-genai's default api_version
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/together/v1/models", list_models)
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


def _chat(wire: Wire) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def chat(request: web.Request) -> web.StreamResponse:
        return await handle(request, wire)

    return chat


async def gemini(request: web.Request) -> web.StreamResponse:
    _, _, action = request.match_info["target"].rpartition(":")
    if action not in GEMINI_ACTIONS:
        return GEMINI.error(404, f"Method {action!r} is not found in the fake provider.")
    return await handle(request, GEMINI)


# -- control API ---------------------------------------------------------------------------


async def push_script(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        steps = parse_steps(orjson.loads(await request.read()))
    except (orjson.JSONDecodeError, ScriptError) as exc:
        return web.Response(
            body=error_body(400, message=f"bad script: {exc}"),
            status=400,
            content_type="application/json",
        )
    state.script.push(steps)
    return json_response({"queued": len(steps), "pending": len(state.script)})


async def show_script(request: web.Request) -> web.Response:
    return json_response(request.app[STATE].script.snapshot())


async def clear_script(request: web.Request) -> web.Response:
    return json_response({"cleared": request.app[STATE].script.clear()})


async def list_calls(request: web.Request) -> web.Response:
    return json_response(list(request.app[STATE].calls))


async def clear_calls(request: web.Request) -> web.Response:
    calls = request.app[STATE].calls
    count = len(calls)
    calls.clear()
    return json_response({"cleared": count})


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def list_models(request: web.Request) -> web.Response:
    models = request.app[STATE].config.models
    return json_response(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
                for m in models
            ],
        }
    )
