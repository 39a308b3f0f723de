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
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from services.fake_provider.behaviour import FIRST_TOOL, Ask, BadRequest, Finish, Plan, Tool
from services.fake_provider.pieces import count_tokens
from services.fake_provider.wires import Stream, seconds

GEMINI_ACTIONS = frozenset({"generateContent", "streamGenerateContent"})
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
_IMAGE_KEYS = ("inlineData", "inline_data", "fileData", "file_data")


def _get(mapping: Mapping[str, Any], camel: str, snake: str) -> Any:
    """A field by its proto-JSON name; the API also accepts snake_case."""
    value = mapping.get(camel)
    return mapping.get(snake) if value is None else value


def _chunk(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\r\n\r\n"


# -- reading requests ----------------------------------------------------------------------


def _parts(content: object) -> list[Any]:
    parts = content.get("parts") if isinstance(content, dict) else None
    return parts if isinstance(parts, list) else []


def _text(content: object) -> str:
    return " ".join(
        str(p["text"]) for p in _parts(content) if isinstance(p, dict) and p.get("text") is not None
    )


def _responses(content: object) -> list[str]:
    """The JSON of each functionResponse's `response` in a content."""
    found = []
    for part in _parts(content):
        response = (
            _get(part, "functionResponse", "function_response") if isinstance(part, dict) else None
        )
        if isinstance(response, dict):
            found.append(orjson.dumps(response.get("response")).decode())
    return found


def _tools(body: dict[str, Any]) -> tuple[tuple[Tool, ...], str | None, bool]:
    tools = []
    raw = body.get("tools") or []
    if not isinstance(raw, list):
        raise BadRequest("Invalid value at 'tools': expected a list.")
    for entry in raw:
        declarations = (
            _get(entry, "functionDeclarations", "function_declarations")
            if isinstance(entry, dict)
            else None
        )
        for fn in declarations if isinstance(declarations, list) else []:
            name = fn.get("name") if isinstance(fn, dict) else None
            if not isinstance(name, str) or not name:
                raise BadRequest(
                    "* GenerateContentRequest.tools.function_declarations.name: Name is required."
                )
            schema = fn.get("parameters") or _get(
                fn, "parametersJsonSchema", "parameters_json_schema"
            )
            tools.append(Tool(name=name, parameters=schema))
    config = _get(body, "toolConfig", "tool_config")
    calling = (
        _get(config, "functionCallingConfig", "function_calling_config")
        if isinstance(config, dict)
        else None
    )
    mode = str(calling.get("mode") or "").upper() if isinstance(calling, dict) else ""
    if mode == "NONE":
        return tuple(tools), None, True
    if mode == "ANY":
        names = _get(calling, "allowedFunctionNames", "allowed_function_names")  # type: ignore[arg-type]
        if isinstance(names, list) and names and isinstance(names[0], str):
            return tuple(tools), names[0], False
        return tuple(tools), FIRST_TOOL, False
    return tuple(tools), None, False


def parse_generate(request: web.Request, body: Any) -> Ask:
    model, _, action = request.match_info["target"].rpartition(":")
    stream = action == "streamGenerateContent"
    if stream and request.query.get("alt") != "sse":
        raise BadRequest("The fake provider streams only with alt=sse.")
    if not isinstance(body, dict):
        raise BadRequest("Invalid JSON payload received. Expected a JSON object.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    config = _get(body, "generationConfig", "generation_config")
    max_tokens = (
        _get(config, "maxOutputTokens", "max_output_tokens") if isinstance(config, dict) else None
    )
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise BadRequest("Invalid value at 'generation_config.max_output_tokens'.")
    texts = [" ".join([_text(c), *_responses(c)]) for c in contents]
    system = _get(body, "systemInstruction", "system_instruction")
    if system:
        texts.append(_text(system))
    last_user = next(
        (c for c in reversed(contents) if isinstance(c, dict) and c.get("role", "user") == "user"),
        None,
    )
    images = sum(
        1 for p in _parts(last_user) if isinstance(p, dict) and any(k in p for k in _IMAGE_KEYS)
    )
    results = _responses(contents[-1])
    tools, forced, off = _tools(body)
    return Ask(
        wire="gemini",
        model=model,
        stream=stream,
        max_tokens=max_tokens,
        prompt_tokens=count_tokens(texts),
        user_text=_text(last_user),
        images=images,
        tool_results=tuple(results) if results else None,
        tools=tools,
        forced_tool=forced,
        tools_off=off,
    )


# -- rendering answers ---------------------------------------------------------------------


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
