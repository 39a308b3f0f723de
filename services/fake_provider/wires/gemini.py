"""Google Gemini (Generative Language API, API key): wire-format doc §3.

`POST /v1beta/models/{model}:generateContent` answers a `GenerateContentResponse`;
`POST /v1beta/models/{model}:streamGenerateContent?alt=sse` streams them as SSE `data:` lines
with CRLF line ends, each chunk with the new parts and a cumulative `usageMetadata`, the last
with `finishReason`; the body simply ends (no `[DONE]`). Auth is `x-goog-api-key` or `?key=`.
Function calls come whole (one per chunk when streaming) and without ids, as the Gemini API
sends them by default. Errors are `google.rpc.Status` JSON; a 429 carries QuotaFailure and
RetryInfo details.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import orjson
from aiohttp import web

from services.fake_provider.behaviour import Ask, Finish, Plan
from services.fake_provider.wires import Stream, seconds
from services.fake_provider.wires.gemini_request import GEMINI_ACTIONS, parse_generate

__all__ = ["GEMINI_ACTIONS", "GeminiWire"]

_FINISH = {Finish.STOP: "STOP", Finish.LENGTH: "MAX_TOKENS", Finish.TOOL_CALLS: "STOP"}
_STATUS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "API key not valid. Please pass a valid API key."),
    403: ("PERMISSION_DENIED", "The caller does not have permission."),
    404: ("NOT_FOUND", "Requested entity was not found."),
    409: ("ABORTED", "The request was aborted."),
    429: ("RESOURCE_EXHAUSTED", "You exceeded your current quota."),
    500: ("INTERNAL", "An internal error has occurred. Please retry."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}
_NO_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
_RPC = "type.googleapis.com/google.rpc."
_SERVICE = "generativelanguage.googleapis.com"
_MINUTE_QUOTA = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
_DAY_QUOTA = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"


def _chunk(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\r\n\r\n"


class _Renderer:
    """Encodes the responses of one answer; the fixed fields are shared."""

    __slots__ = ("_model", "_prompt", "_response_id")

    def __init__(self, model: str, prompt_tokens: int) -> None:
        self._model = model
        self._prompt = prompt_tokens
        # Gemini's response ids are URL-safe base64 of a few random bytes.
        self._response_id = base64.urlsafe_b64encode(os.urandom(15)).decode()

    def response(
        self, parts: list[dict[str, Any]], candidates: int, finish: str | None
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish is not None:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        return {
            "candidates": [candidate],
            "usageMetadata": {
                "promptTokenCount": self._prompt,
                "candidatesTokenCount": candidates,
                "totalTokenCount": self._prompt + candidates,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self._prompt}],
            },
            "modelVersion": self._model,
            "responseId": self._response_id,
        }


def _call_part(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"functionCall": {"name": name, "args": args}}


class GeminiWire:
    name = "gemini"

    def credential(self, request: web.Request) -> str:
        return (request.headers.get("x-goog-api-key") or request.query.get("key") or "").strip()

    def url_model(self, request: web.Request) -> str | None:
        return request.match_info.get("target", "").rpartition(":")[0] or None

    def parse(self, request: web.Request, body: Any) -> Ask:
        return parse_generate(request, body)

    def unauthorized(self) -> web.Response:
        return self._error(401, _NO_KEY, [_error_info("CREDENTIALS_MISSING")], {})

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
        headers = {"retry-after": seconds(retry_after_s)} if retry_after_s is not None else {}
        details: list[dict[str, Any]] = []
        if status == 429:
            wait = seconds(retry_after_s if retry_after_s is not None else 1.0)
            quota = _DAY_QUOTA if code == "insufficient_quota" else code or _MINUTE_QUOTA
            message = message or (
                "You exceeded your current quota, please check your plan and billing details. "
                f"Please retry in {wait}s."
            )
            details = [
                {
                    "@type": _RPC + "QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": f"{_SERVICE}/generate_content_free_tier_requests",
                            "quotaId": quota,
                            "quotaDimensions": {"location": "global", "model": model},
                            "quotaValue": "15",
                        }
                    ],
                },
                {"@type": _RPC + "RetryInfo", "retryDelay": f"{wait}s"},
            ]
        elif status == 401 or code:
            details = [_error_info(code or "API_KEY_INVALID")]
        if message is None and status == 404 and model:
            message = (
                f"models/{model} is not found for API version v1beta, or is not supported "
                "for generateContent."
            )
        return self._error(status, message, details, headers)

    def _error(
        self,
        status: int,
        message: str | None,
        details: list[dict[str, Any]],
        headers: dict[str, str],
    ) -> web.Response:
        default = ("INTERNAL" if status >= 500 else "FAILED_PRECONDITION", f"HTTP {status}.")
        rpc_status, default_message = _STATUS.get(status, default)
        error: dict[str, Any] = {
            "code": status,
            "message": message or default_message,
            "status": rpc_status,
        }
        if details:
            error["details"] = details
        return web.Response(
            body=orjson.dumps({"error": error}),
            status=status,
            content_type="application/json",
            charset="UTF-8",
            headers=headers,
        )

    def answer(self, ask: Ask, plan: Plan) -> web.Response:
        render = _Renderer(ask.model, plan.prompt_tokens)
        if plan.tool_calls:
            parts = [_call_part(c.name, c.arguments) for c in plan.tool_calls]
        else:
            parts = [{"text": "".join(plan.text)}]
        body = render.response(parts, plan.completion_tokens, _FINISH[plan.finish])
        return web.Response(
            body=orjson.dumps(body), content_type="application/json", charset="UTF-8"
        )

    def stream(self, ask: Ask, plan: Plan) -> Stream:
        render = _Renderer(ask.model, plan.prompt_tokens)
        finish = _FINISH[plan.finish]
        units: list[bytes] = []
        sent = 0
        if plan.tool_calls:
            for i, call in enumerate(plan.tool_calls):
                sent += len(call.pieces)
                last = i == len(plan.tool_calls) - 1
                part = _call_part(call.name, call.arguments)
                units.append(_chunk(render.response([part], sent, finish if last else None)))
        else:
            for i, piece in enumerate(plan.text):
                last = i == len(plan.text) - 1
                units.append(
                    _chunk(render.response([{"text": piece}], i + 1, finish if last else None))
                )
        # An answer without content still ends with a finish reason.
        tail = b"" if units else _chunk(render.response([{"text": ""}], 0, finish))
        error = {"error": {"code": 503, "message": _STATUS[503][1], "status": "UNAVAILABLE"}}
        return Stream(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            head=b"",
            units=units,
            tail=tail,
            error=_chunk(error),
        )


def _error_info(reason: str) -> dict[str, Any]:
    return {
        "@type": _RPC + "ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {"service": _SERVICE},
    }
