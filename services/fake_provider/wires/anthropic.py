"""Anthropic Messages: `POST /v1/messages` (wire-format doc §2).

Requires `x-api-key` (or `Authorization: Bearer`, as recent SDKs send the key; else 401
`authentication_error`), `anthropic-version` (400) and `max_tokens` in the body, as the real
API does (see `anthropic_request.py`). Answers a `Message`, or an SSE stream of
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

from services.fake_provider.behaviour import Ask, Finish, Plan
from services.fake_provider.wires import Stream, seconds
from services.fake_provider.wires.anthropic_request import parse_messages

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
