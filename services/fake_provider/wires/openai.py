"""OpenAI Chat Completions: `POST /v1/chat/completions`, Bearer auth (wire-format doc §1).

Payloads are deterministic for a given request, so tests can assert exact numbers: prompt
tokens are whitespace-separated words plus 4 per message, completion tokens the pieces
sent. The fixed parts of a stream's chunks are encoded once per stream.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
from aiohttp import web

from services.fake_provider.behaviour import Ask, Plan
from services.fake_provider.wires import Stream, seconds
from services.fake_provider.wires.openai_request import parse_chat

SYSTEM_FINGERPRINT = "fp_fake"
DONE_EVENT = b"data: [DONE]\n\n"
_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_MID_STREAM = "The fake provider failed mid-stream."

# OpenAI's (type, code, message) for the statuses a script is likely to ask for.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", "invalid_value", "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported.",
    ),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    408: ("server_error", "timeout", "Request timed out."),
    409: ("invalid_request_error", "conflict", "The request conflicted with another one."),
    413: ("invalid_request_error", "request_too_large", "Request too large."),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable entity."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", "server_is_overloaded", "The engine is currently overloaded."),
    504: ("server_error", "timeout", "Gateway timeout."),
    529: ("server_error", "overloaded", "The server is overloaded."),
}
_QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."


def error_body(
    status: int,
    *,
    message: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """OpenAI's error envelope for `status`; `code` overrides the usual one."""
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    err_type, default_code, default_message = _ERRORS.get(
        status, (default_type, None, f"HTTP {status}.")
    )
    if code == "insufficient_quota":
        err_type, default_message = "insufficient_quota", _QUOTA_MESSAGE
    return orjson.dumps(
        {
            "error": {
                "message": message or default_message,
                "type": err_type,
                "param": param,
                "code": code if code is not None else default_code,
            }
        }
    )


def error_event(message: str, *, code: str | None = "server_error") -> bytes:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def new_call_id() -> str:
    return "call_" + os.urandom(12).hex()


def completion(
    *,
    completion_id: str,
    created: int,
    model: str,
    content: str | None,
    finish_reason: str,
    usage_obj: dict[str, Any],
    tool_calls: list[dict[str, Any]] | None = None,
) -> bytes:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": None,
        "annotations": [],
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage_obj,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
    )


class ChunkWriter:
    """Encodes the SSE events of one stream; the fixed fields are encoded once."""

    __slots__ = ("_head", "_tail")

    def __init__(self, *, completion_id: str, created: int, model: str, include_usage: bool):
        head = orjson.dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
            }
        )
        # `{...fixed fields...,"choices":` + choices + `,"usage":null}` or `}`
        self._head = b"data: " + head[:-1] + b',"choices":'
        self._tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"

    def _choice(
        self, delta: dict[str, Any], finish_reason: str | None, tail: bytes | None = None
    ) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._head + orjson.dumps([choice]) + (tail or self._tail)

    def role(self, first_tool: dict[str, Any] | None = None) -> bytes:
        if first_tool is None:
            return self._choice({"role": "assistant", "content": "", "refusal": None}, None)
        delta = {"role": "assistant", "content": None, "tool_calls": [first_tool], "refusal": None}
        return self._choice(delta, None)

    def content(self, piece: str) -> bytes:
        return self._choice({"content": piece}, None)

    def tool_calls(self, items: list[dict[str, Any]]) -> bytes:
        return self._choice({"tool_calls": items}, None)

    def finish(self, reason: str, usage_obj: dict[str, Any] | None = None) -> bytes:
        if usage_obj is None:
            return self._choice({}, reason)
        return self._choice({}, reason, b',"usage":' + orjson.dumps(usage_obj) + b"}\n\n")

    def usage(self, usage_obj: dict[str, Any]) -> bytes:
        return self._head + b"[]," + b'"usage":' + orjson.dumps(usage_obj) + b"}\n\n"


def tool_start(index: int, call_id: str, name: str) -> dict[str, Any]:
    """The first stream fragment of a tool call: id, type and name, no arguments yet."""
    return {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }


def tool_piece(index: int, piece: str) -> dict[str, Any]:
    return {"index": index, "function": {"arguments": piece}}


class OpenAIWire:
    """OpenAI's chat completions; Together's differences are in `together.py`."""

    name = "openai"
    with_usage_on_finish = False  # Together puts usage on the finish chunk, always
    indexed_tool_calls = False  # Together numbers non-streamed tool calls

    def credential(self, request: web.Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""

    def url_model(self, request: web.Request) -> str | None:
        return None

    def parse(self, request: web.Request, body: Any) -> Ask:
        return parse_chat(body, self.name)

    def unauthorized(self) -> web.Response:
        return self.error(401, _NO_KEY, code=None)

    def headers(self, status: int, retry_after_s: float | None) -> dict[str, str]:
        if retry_after_s is None and status == 429:
            retry_after_s = 1.0
        return {"retry-after": seconds(retry_after_s)} if retry_after_s is not None else {}

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
        if message is None and status == 404 and model:
            message = f"The model `{model}` does not exist or you do not have access to it."
        return web.Response(
            body=self.error_body(status, message=message, code=code, param=param),
            status=status,
            content_type="application/json",
            headers=self.headers(status, retry_after_s),
        )

    def error_body(
        self, status: int, *, message: str | None, code: str | None, param: str | None
    ) -> bytes:
        return error_body(status, message=message, code=code, param=param)

    def finish_reason(self, plan: Plan) -> str:
        return plan.finish  # a StrEnum is a str; `.value` is a slow descriptor

    def answer(self, ask: Ask, plan: Plan) -> web.Response:
        completion_id = "chatcmpl-fake" + os.urandom(12).hex()
        tool_calls: list[dict[str, Any]] | None = None
        if plan.tool_calls:
            tool_calls = [
                {
                    "id": new_call_id(),
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json},
                }
                for call in plan.tool_calls
            ]
            if self.indexed_tool_calls:
                for i, item in enumerate(tool_calls):
                    item["index"] = i
        body = completion(
            completion_id=completion_id,
            created=int(time.time()),
            model=ask.model,
            content=None if tool_calls else "".join(plan.text),
            finish_reason=self.finish_reason(plan),
            usage_obj=usage(plan.prompt_tokens, plan.completion_tokens),
            tool_calls=tool_calls,
        )
        headers = self.headers(200, None)
        headers["x-request-id"] = completion_id
        return web.Response(body=body, content_type="application/json", headers=headers)

    def stream(self, ask: Ask, plan: Plan) -> Stream:
        completion_id = "chatcmpl-fake" + os.urandom(12).hex()
        writer = ChunkWriter(
            completion_id=completion_id,
            created=int(time.time()),
            model=ask.model,
            include_usage=ask.include_usage or self.with_usage_on_finish,
        )
        units: list[bytes] = []
        if plan.tool_calls:
            ids = [new_call_id() for _ in plan.tool_calls]
            head = writer.role(tool_start(0, ids[0], plan.tool_calls[0].name))
            for index, call in enumerate(plan.tool_calls):
                for k, piece in enumerate(call.pieces):
                    unit = writer.tool_calls([tool_piece(index, piece)])
                    if k == 0 and index > 0:
                        unit = writer.tool_calls([tool_start(index, ids[index], call.name)]) + unit
                    units.append(unit)
        else:
            head = writer.role()
            units = [writer.content(piece) for piece in plan.text]
        usage_obj = usage(plan.prompt_tokens, plan.completion_tokens)
        if self.with_usage_on_finish:
            tail = writer.finish(self.finish_reason(plan), usage_obj)
        else:
            tail = writer.finish(self.finish_reason(plan))
            if ask.include_usage:
                tail += writer.usage(usage_obj)
        headers = {
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "x-request-id": completion_id,
            **self.headers(200, None),
        }
        return Stream(
            headers=headers,
            head=head,
            units=units,
            tail=tail + DONE_EVENT,
            error=error_event(_MID_STREAM),
        )
