"""Anthropic Messages: `POST /v1/messages` (wire-format doc §2).

Requires `x-api-key` (or, as recent SDKs send it, `Authorization: Bearer`; else 401
`authentication_error`) and `anthropic-version` (400), and
`max_tokens` in the body, as the real API does. Answers a `Message`, or an SSE stream of
`message_start` (input usage), `ping`, `content_block_start/delta/stop` per block (`text_delta`,
or `input_json_delta` pieces after a `tool_use` start with `input: {}`), `message_delta`
(stop_reason, cumulative usage) and `message_stop`. Errors use the `{"type": "error", ...}`
envelope; a mid-stream failure is an `event: error` with an `overloaded_error`.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from aiohttp import web

from services.fake_provider.behaviour import FIRST_TOOL, Ask, BadRequest, Finish, Plan, Tool
from services.fake_provider.pieces import count_tokens
from services.fake_provider.wires import Stream, seconds

_STOP_REASONS = {
    Finish.STOP: "end_turn",
    Finish.LENGTH: "max_tokens",
    Finish.TOOL_CALLS: "tool_use",
}
# Anthropic's error type and message per status (doc §2.6).
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "This request would exceed the rate limit for your organization."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out."),
    529: ("overloaded_error", "Overloaded"),
}
_ERROR_TYPES = frozenset(t for t, _ in _ERRORS.values())
_MID_STREAM = orjson.dumps(
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
)


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _request_id() -> str:
    return "req_fake" + os.urandom(12).hex()


# -- reading requests ----------------------------------------------------------------------


def _blocks_text(content: object, *, results: bool = False) -> str:
    """String content, or the `text` blocks joined by spaces (and tool results' text)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text") or ""))
        elif results and block.get("type") == "tool_result":
            texts.append(_blocks_text(block.get("content")))
    return " ".join(texts)


def _tool_results(message: object) -> tuple[str, ...] | None:
    if not isinstance(message, dict) or message.get("role") != "user":
        return None
    content = message.get("content")
    if not isinstance(content, list):
        return None
    results = tuple(
        _blocks_text(b.get("content"))
        for b in content
        if isinstance(b, dict) and b.get("type") == "tool_result"
    )
    return results or None


def _tools(body: dict[str, Any]) -> tuple[tuple[Tool, ...], str | None, bool]:
    raw = body.get("tools") or []
    if not isinstance(raw, list):
        raise BadRequest("tools: Input should be a valid list")
    tools = []
    for i, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools.{i}.name: Field required")
        tools.append(Tool(name=name, parameters=item.get("input_schema")))
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "none":
        return tuple(tools), None, True
    if kind == "any":
        return tuple(tools), FIRST_TOOL, False
    if kind == "tool":
        name = choice.get("name")  # type: ignore[union-attr]
        if not isinstance(name, str) or not name:
            raise BadRequest("tool_choice.tool.name: Field required")
        return tuple(tools), name, False
    return tuple(tools), None, False


def parse_messages(request: web.Request, body: Any) -> Ask:
    if not request.headers.get("anthropic-version"):
        raise BadRequest("anthropic-version: header is required")
    if body is None:
        raise BadRequest("There was an error parsing the body of your request as JSON.")
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: at least one message is required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise BadRequest("max_tokens: Field required")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("max_tokens: Input should be an integer greater than or equal to 1")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("stream: Input should be a valid boolean")
    texts = [_blocks_text(m.get("content"), results=True) for m in messages if isinstance(m, dict)]
    if body.get("system"):
        texts.append(_blocks_text(body["system"]))
    last_user = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    content = last_user.get("content") if last_user is not None else None
    images = (
        sum(1 for b in content if isinstance(b, dict) and b.get("type") == "image")
        if isinstance(content, list)
        else 0
    )
    tools, forced, off = _tools(body)
    return Ask(
        wire="anthropic",
        model=model,
        stream=bool(stream),
        max_tokens=max_tokens,
        prompt_tokens=count_tokens(texts),
        user_text=_blocks_text(content),
        images=images,
        tool_results=_tool_results(messages[-1]),
        tools=tools,
        forced_tool=forced,
        tools_off=off,
    )


# -- rendering answers ---------------------------------------------------------------------


def _usage(plan: Plan, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": plan.prompt_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "service_tier": "standard",
    }


def _message(
    message_id: str, model: str, plan: Plan, content: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP_REASONS[plan.finish],
        "stop_sequence": None,
        "usage": _usage(plan, plan.completion_tokens),
    }


def _tool_use_id() -> str:
    return "toolu_" + os.urandom(12).hex()


class AnthropicWire:
    name = "anthropic"

    def credential(self, request: web.Request) -> str:
        key = request.headers.get("x-api-key", "").strip()
        if key:
            return key
        # Recent official SDKs send the API key as a bearer token, which the API accepts.
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""

    def url_model(self, request: web.Request) -> str | None:
        return None

    def parse(self, request: web.Request, body: Any) -> Ask:
        return parse_messages(request, body)

    def unauthorized(self) -> web.Response:
        return self.error(401, "x-api-key header is required")

    def error(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
        model: str = "",
    ) -> web.Response:
        default = ("api_error" if status >= 500 else "invalid_request_error", f"HTTP {status}.")
        err_type, default_message = _ERRORS.get(status, default)
        if code in _ERROR_TYPES:
            err_type = code
        if message is None and status == 404 and model:
            message = f"model: {model}"
        request_id = _request_id()
        headers = {"request-id": request_id}
        if retry_after_s is None and status == 429:
            retry_after_s = 1.0
        if retry_after_s is not None:
            headers["retry-after"] = seconds(retry_after_s)
        body = {
            "type": "error",
            "error": {"type": err_type, "message": message or default_message},
            "request_id": request_id,
        }
        return web.Response(
            body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
        )

    def answer(self, ask: Ask, plan: Plan) -> web.Response:
        content: list[dict[str, Any]]
        if plan.tool_calls:
            content = [
                {"type": "tool_use", "id": _tool_use_id(), "name": c.name, "input": c.arguments}
                for c in plan.tool_calls
            ]
        else:
            text = "".join(plan.text)
            content = [{"type": "text", "text": text}] if text else []
        message = _message("msg_fake" + os.urandom(12).hex(), ask.model, plan, content)
        return web.Response(
            body=orjson.dumps(message),
            content_type="application/json",
            headers={"request-id": _request_id()},
        )

    def stream(self, ask: Ask, plan: Plan) -> Stream:
        start = _message("msg_fake" + os.urandom(12).hex(), ask.model, plan, [])
        # Like the real API: no stop reason yet, and a token or so of output so far.
        start.update(stop_reason=None, usage=_usage(plan, 1))
        head = event("message_start", {"type": "message_start", "message": start})
        head += event("ping", {"type": "ping"})
        units: list[bytes] = []
        if plan.tool_calls:
            for index, call in enumerate(plan.tool_calls):
                block = {"type": "tool_use", "id": _tool_use_id(), "name": call.name, "input": {}}
                for k, piece in enumerate(call.pieces):
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    unit = _block_delta(index, delta)
                    if k == 0:
                        unit = _block_start(index, block) + unit
                        if index > 0:
                            unit = _block_stop(index - 1) + unit
                    units.append(unit)
            last = len(plan.tool_calls) - 1
        else:
            head += _block_start(0, {"type": "text", "text": ""})
            units = [_block_delta(0, {"type": "text_delta", "text": p}) for p in plan.text]
            last = 0
        usage = _usage(plan, plan.completion_tokens)
        del usage["service_tier"]
        tail = _block_stop(last) + event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": _STOP_REASONS[plan.finish], "stop_sequence": None},
                "usage": usage,
            },
        )
        tail += event("message_stop", {"type": "message_stop"})
        headers = {
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "request-id": _request_id(),
        }
        return Stream(
            headers=headers,
            head=head,
            units=units,
            tail=tail,
            error=b"event: error\ndata: " + _MID_STREAM + b"\n\n",
        )


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return event(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def _block_delta(index: int, delta: dict[str, Any]) -> bytes:
    return event(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def _block_stop(index: int) -> bytes:
    return event("content_block_stop", {"type": "content_block_stop", "index": index})
