"""OpenAI chat request -> Gemini `generateContent` request (wire-formats doc §3.1-§3.3).

    system / developer messages  -> systemInstruction
    user / assistant / tool      -> contents[] with roles user / model / user, consecutive
                                    same-role turns merged into one Content
    tools, tool_choice           -> tools[0].functionDeclarations, toolConfig
    sampling and output options  -> generationConfig; what Gemini lacks is dropped

Images arrive here as `data:` URLs only: the adapter's `prepare` hook has already
fetched http(s) URLs into bytes (Gemini's `fileData` takes only Google-hosted files).
Anything the client sent that cannot be expressed raises a `FinalProviderError` (400)
naming the offending `param`.
"""

from __future__ import annotations

import binascii
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from services.worker.media import sniff_image_type
from services.worker.providers.base import ChatRequest, HttpCall, Target
from services.worker.providers.google.ids import decode_call_id
from shared.errors import FinalProviderError

MAX_STOP_SEQUENCES = 5
_TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}


def endpoint(target: Target, *, stream: bool) -> str:
    model = target.offer.upstream_model.removeprefix("models/")
    base = f"{target.base_url.rstrip('/')}/models/{urllib.parse.quote(model, safe='-._~')}"
    return f"{base}:streamGenerateContent?alt=sse" if stream else f"{base}:generateContent"


def build_request(req: ChatRequest, target: Target) -> HttpCall:
    headers = {"Content-Type": "application/json"}
    if target.api_key:
        headers["x-goog-api-key"] = target.api_key  # never in the URL: URLs end up in logs
    return HttpCall(
        method="POST",
        url=endpoint(target, stream=req.stream),
        headers=headers,
        body=orjson.dumps(translate_body(req.body)),
    )


def translate_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Gemini request body for an OpenAI chat request body."""
    system_parts, contents = _contents(body.get("messages") or [])
    out: dict[str, Any] = {}
    if not contents:
        if not system_parts:
            raise _invalid("The request has no message Gemini can answer.", "messages")
        # Gemini needs at least one turn; a system-only request becomes the user's turn.
        contents, system_parts = [{"role": "user", "parts": system_parts}], []
    out["contents"] = contents
    if system_parts:
        out["systemInstruction"] = {"parts": system_parts}
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        tool_config = _tool_config(body.get("tool_choice"))
        if tool_config:
            out["toolConfig"] = tool_config
    generation = _generation_config(body)
    if generation:
        out["generationConfig"] = generation
    return out


# -- messages ------------------------------------------------------------------------------


class _Turns:
    """contents[] under construction: same-role turns merge into one Content."""

    def __init__(self) -> None:
        self.contents: list[dict[str, Any]] = []
        # Tool results wait here so a run of them goes out in the order of the calls.
        self._results: list[tuple[int, dict[str, Any]]] = []

    def add(self, role: str, parts: list[dict[str, Any]]) -> None:
        self.flush_results()
        self._append(role, parts)

    def add_result(self, order: int, part: dict[str, Any]) -> None:
        self._results.append((order, part))

    def flush_results(self) -> None:
        if self._results:
            self._results.sort(key=lambda item: item[0])
            self._append("user", [part for _, part in self._results])
            self._results.clear()

    def _append(self, role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return  # Gemini refuses a Content without parts
        if self.contents and self.contents[-1]["role"] == role:
            self.contents[-1]["parts"].extend(parts)
        else:
            self.contents.append({"role": role, "parts": parts})


def _contents(messages: Sequence[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    turns = _Turns()
    # tool_call id -> (function name, position among all calls so far)
    calls: dict[str, tuple[str, int]] = {}
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_text_parts(message.get("content"), f"{where}.content"))
        elif role == "user":
            turns.add("user", _user_parts(message.get("content"), f"{where}.content"))
        elif role == "assistant":
            turns.add("model", _assistant_parts(message, where, calls))
        elif role == "tool":
            call_id = message.get("tool_call_id")
            known = calls.get(call_id) if isinstance(call_id, str) else None
            if known is None:
                raise _invalid(
                    f"'{where}.tool_call_id' does not match a tool call of an earlier "
                    "assistant message.",
                    f"{where}.tool_call_id",
                )
            name, order = known
            upstream_id, _signature = decode_call_id(call_id)
            turns.add_result(order, _function_response(name, upstream_id, message, where))
        elif role == "function":  # the deprecated single-function form
            name = message.get("name")
            if not isinstance(name, str) or not name:
                raise _invalid(f"'{where}.name' is required.", f"{where}.name")
            turns.add_result(len(calls), _function_response(name, None, message, where))
        else:
            raise _invalid(f"'{where}.role' {role!r} is not supported.", f"{where}.role")
    turns.flush_results()
    return system, turns.contents


def _text_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts = []
    for j, part in enumerate(content or ()):
        text = part.get("text") if part.get("type") == "text" else part.get("refusal")
        if not isinstance(text, str):
            raise _invalid(f"'{where}[{j}]' must be a text part here.", f"{where}[{j}]")
        if text:
            parts.append({"text": text})
    return parts


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str) or content is None:
        return _text_parts(content, where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url")
            parts.append(_image_part(url, f"{at}.image_url.url"))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            mime = _AUDIO_TYPES.get(str(audio.get("format")))
            if mime is None or not isinstance(audio.get("data"), str):
                raise _invalid(
                    f"'{at}.input_audio' needs base64 'data' and a wav/mp3 'format'.", at
                )
            parts.append({"inlineData": {"mimeType": mime, "data": audio["data"]}})
        elif kind == "file":
            file_data = (part.get("file") or {}).get("file_data")
            if not isinstance(file_data, str) or not file_data.startswith("data:"):
                raise _invalid(
                    f"'{at}.file' must carry 'file_data' as a data: URL for this model.",
                    f"{at}.file.file_data",
                )
            mime, data = parse_data_url(file_data, f"{at}.file.file_data")
            parts.append({"inlineData": {"mimeType": mime, "data": data}})
        else:
            raise _invalid(f"'{at}.type' {kind!r} is not supported for this model.", f"{at}.type")
    return parts


def _image_part(url: Any, param: str) -> dict[str, Any]:
    if not isinstance(url, str):
        raise _invalid(f"'{param}' must be a string.", param)
    if url.startswith("data:"):
        mime, data = parse_data_url(url, param)
        return {"inlineData": {"mimeType": mime, "data": data}}
    # http(s) URLs were fetched and inlined by `prepare`; one still here means it was not run.
    raise _invalid(f"'{param}' must be fetched before it can be sent to this model.", param)


def parse_data_url(url: str, param: str) -> tuple[str, str]:
    """(mime type, base64 data) of a `data:` URL (RFC 2397)."""
    header, comma, payload = url.partition(",")
    if not comma:
        raise _invalid(f"'{param}' is not a valid data: URL.", param)
    fields = header.removeprefix("data:").split(";")
    mime = fields[0].strip().lower()
    if "base64" in (f.strip().lower() for f in fields[1:]):
        data = "".join(payload.split())  # base64 may be wrapped over lines
    else:
        data = binascii.b2a_base64(urllib.parse.unquote_to_bytes(payload), newline=False).decode()
    if not data:
        raise _invalid(f"'{param}' has no data.", param)
    if not mime:
        try:
            head = binascii.a2b_base64(data[:16])
        except binascii.Error:
            head = b""
        mime = sniff_image_type(head) or ""
        if not mime:
            raise _invalid(f"'{param}' needs a media type (data:<type>;base64,...).", param)
    return mime, data


def _assistant_parts(
    message: Mapping[str, Any], where: str, calls: dict[str, tuple[str, int]]
) -> list[dict[str, Any]]:
    parts = _text_parts(message.get("content"), f"{where}.content")
    for k, call in enumerate(message.get("tool_calls") or ()):
        at = f"{where}.tool_calls[{k}]"
        if call.get("type", "function") != "function":
            raise _invalid(f"'{at}.type' must be 'function' for this model.", f"{at}.type")
        function = call.get("function") or {}
        call_id = call.get("id")
        name = function.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise _invalid(f"'{at}' needs an 'id' and a 'function.name'.", at)
        calls[call_id] = (name, len(calls))
        upstream_id, signature = decode_call_id(call_id)
        parts.append(_function_call(name, upstream_id, signature, function.get("arguments"), at))
    legacy = message.get("function_call")
    if isinstance(legacy, Mapping) and isinstance(legacy.get("name"), str):
        at = f"{where}.function_call"
        parts.append(_function_call(legacy["name"], None, None, legacy.get("arguments"), at))
    return parts


def _function_call(
    name: str, upstream_id: str | None, signature: str | None, arguments: Any, where: str
) -> dict[str, Any]:
    call: dict[str, Any] = {"name": name, "args": _arguments(arguments, f"{where}.function")}
    if upstream_id:
        call["id"] = upstream_id
    part: dict[str, Any] = {"functionCall": call}
    if signature:
        part["thoughtSignature"] = signature  # back on the very part it came with
    return part


def _arguments(arguments: Any, where: str) -> dict[str, Any]:
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError as exc:
        raise _invalid(f"'{where}.arguments' is not valid JSON.", f"{where}.arguments") from exc
    if not isinstance(value, dict):
        raise _invalid(f"'{where}.arguments' must be a JSON object.", f"{where}.arguments")
    return value


def _function_response(
    name: str, upstream_id: str | None, message: Mapping[str, Any], where: str
) -> dict[str, Any]:
    text = "".join(p["text"] for p in _text_parts(message.get("content"), f"{where}.content"))
    response: Any = None
    if text.lstrip().startswith("{"):
        try:
            response = orjson.loads(text)
        except orjson.JSONDecodeError:
            response = None
    if not isinstance(response, dict):
        # `response` is a protobuf Struct: anything but a JSON object goes in a wrapper.
        response = {"result": text}
    result: dict[str, Any] = {"name": name, "response": response}
    if upstream_id:
        result["id"] = upstream_id
    return {"functionResponse": result}


# -- tools ---------------------------------------------------------------------------------


def _tools(tools: Any) -> list[dict[str, Any]]:
    declarations = []
    for tool in tools or ():
        function = tool.get("function") or {}
        declaration: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = function["description"]
        parameters = function.get("parameters")
        if parameters:
            # Plain JSON Schema goes as `parametersJsonSchema`: `parameters` only takes
            # an OpenAPI subset and rejects keywords such as additionalProperties.
            declaration["parametersJsonSchema"] = parameters
        declarations.append(declaration)
    return [{"functionDeclarations": declarations}] if declarations else []


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        mode = _TOOL_CHOICE_MODES.get(choice)
        if mode is None:
            raise _invalid(f"'tool_choice' {choice!r} is not supported.", "tool_choice")
        return {"functionCallingConfig": {"mode": mode}}
    if choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise _invalid("'tool_choice.function.name' is required.", "tool_choice")
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    if choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        names = [
            (t.get("function") or {}).get("name")
            for t in allowed.get("tools") or ()
            if isinstance(t, Mapping)
        ]
        mode = "ANY" if allowed.get("mode") == "required" else "AUTO"
        return {
            "functionCallingConfig": {
                "mode": mode,
                "allowedFunctionNames": [n for n in names if isinstance(n, str)],
            }
        }
    raise _invalid("'tool_choice' is not supported for this model.", "tool_choice")


# -- generation config ---------------------------------------------------------------------


def _generation_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for openai_name, gemini_name in (("temperature", "temperature"), ("top_p", "topP")):
        if body.get(openai_name) is not None:
            config[gemini_name] = body[openai_name]
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    stop = body.get("stop")
    if stop:
        sequences = [stop] if isinstance(stop, str) else list(stop)
        if len(sequences) > MAX_STOP_SEQUENCES:
            raise _invalid(f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences here.", "stop")
        config["stopSequences"] = sequences
    n = body.get("n")
    if n is not None and n != 1:
        config["candidateCount"] = n
    if body.get("seed") is not None:
        config["seed"] = body["seed"]
    # Some models (Gemini 3) refuse penalties outright; OpenAI's default of 0 is no penalty.
    for openai_name, gemini_name in (
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if body.get(openai_name):
            config[gemini_name] = body[openai_name]
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping):
        kind = response_format.get("type")
        if kind == "json_object":
            config["responseMimeType"] = "application/json"
        elif kind == "json_schema":
            config["responseMimeType"] = "application/json"
            schema = (response_format.get("json_schema") or {}).get("schema")
            if isinstance(schema, Mapping):
                config["responseJsonSchema"] = schema
    return config


def _invalid(message: str, param: str) -> FinalProviderError:
    return FinalProviderError(message, status=400, param=param, code="invalid_value")
