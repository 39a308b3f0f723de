"""Shape checks for `POST /v1/chat/completions`, before anything is queued or held.

The body is parsed once (orjson) and checked against the parts of OpenAI's
`CreateChatCompletionRequest` that matter for routing, billing and safety. Every
failure is an `InvalidRequest` naming the offending `param`, so the client gets a 400
in OpenAI's format and no state changes. The raw bytes travel on to the worker as is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from shared.capabilities import required_capabilities
from shared.errors import InvalidRequest

# Everything OpenAI documents for the request (spec 2.3.0), plus the gateway's routing fields.
KNOWN_FIELDS = frozenset(
    {
        "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
        "max_completion_tokens", "max_tokens", "messages", "metadata", "modalities", "model",
        "moderation", "n", "parallel_tool_calls", "prediction", "presence_penalty",
        "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
        "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier",
        "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
        "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
        # gateway routing (OpenRouter style)
        "provider", "models",
    }
)  # fmt: skip
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
CONTENT_PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal"})
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
MAX_MESSAGES = 100_000


@dataclass(frozen=True, slots=True)
class ChatBody:
    """What the api needs from a valid request; the rest stays in the raw bytes."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    max_output_tokens: int | None
    n: int
    needs: frozenset[str] = frozenset()  # capabilities: tools, vision, json, streaming
    fallback_models: tuple[str, ...] = ()


def parse_chat_body(raw: bytes) -> ChatBody:
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.", param=None)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")

    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"Unrecognized request argument supplied: {unknown[0]}",
            param=unknown[0],
            code="unknown_parameter",
        )

    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")

    messages = _messages(body.get("messages"))
    stream = _optional(body, "stream", bool, False)
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not stream:
            raise InvalidRequest(
                "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
            )
        if not isinstance(stream_options, dict):
            raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
        include_usage = _optional(stream_options, "include_usage", bool, False, "stream_options.include_usage")

    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    n = _integer(body, "n", 1, 128) or 1
    max_tokens = _integer(body, "max_completion_tokens", 1, 10_000_000)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, 10_000_000)
    _integer(body, "seed", -(2**63), 2**63 - 1)
    _integer(body, "top_logprobs", 0, 20)
    _stop(body.get("stop"))
    _tools(body.get("tools"))
    _tool_choice(body.get("tool_choice"), has_tools=bool(body.get("tools")))
    _response_format(body.get("response_format"))
    for name in ("metadata", "logit_bias"):
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise InvalidRequest(f"'{name}' must be an object.", param=name)
    _provider_prefs(body.get("provider"), "provider")
    models = body.get("models")
    if models is not None and (
        not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)
    ):
        raise InvalidRequest("'models' must be a list of model names.", param="models")

    return ChatBody(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=include_usage,
        max_output_tokens=max_tokens,
        n=n,
        needs=required_capabilities(body),
        fallback_models=tuple(models or ()),
    )


PROVIDER_FIELDS = frozenset({"order", "only", "ignore", "allow_fallbacks", "sort"})
PROVIDER_SORTS = frozenset({"price", "latency", "throughput"})


def _provider_prefs(value: Any, param: str) -> None:
    """The OpenRouter-style routing object (also the shape of stored user preferences)."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{param}' must be an object.", param=param)
    unknown = sorted(set(value) - PROVIDER_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"'{param}.{unknown[0]}' is not supported; use {sorted(PROVIDER_FIELDS)}.",
            param=f"{param}.{unknown[0]}",
        )
    for name in ("order", "only", "ignore"):
        names = value.get(name)
        if names is not None and (
            not isinstance(names, list) or not all(isinstance(n, str) and n for n in names)
        ):
            raise InvalidRequest(f"'{param}.{name}' must be a list of provider names.", param=f"{param}.{name}")
    if value.get("allow_fallbacks") is not None and not isinstance(value["allow_fallbacks"], bool):
        raise InvalidRequest(f"'{param}.allow_fallbacks' must be a boolean.", param=f"{param}.allow_fallbacks")
    if value.get("sort") is not None and value["sort"] not in PROVIDER_SORTS:
        raise InvalidRequest(
            f"'{param}.sort' must be one of {sorted(PROVIDER_SORTS)}.", param=f"{param}.sort"
        )


def validate_provider_prefs(value: Any) -> None:
    """For stored per-user preferences: the same rules as a request's `provider` object."""
    _provider_prefs(value, "provider")


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    if len(value) > MAX_MESSAGES:
        raise InvalidRequest(f"'messages' has more than {MAX_MESSAGES} items.", param="messages")
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{where}' must be an object.", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"'{where}.role' must be one of {sorted(ROLES)}, got {role!r}.",
                param=f"{where}.role",
            )
        content = message.get("content")
        has_tool_calls = bool(message.get("tool_calls"))
        if content is None:
            if role != "assistant" or not (has_tool_calls or message.get("function_call")):
                raise InvalidRequest(f"'{where}.content' is required.", param=f"{where}.content")
        elif isinstance(content, list):
            _content_parts(content, f"{where}.content")
        elif not isinstance(content, str):
            raise InvalidRequest(
                f"'{where}.content' must be a string or an array of content parts.",
                param=f"{where}.content",
            )
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise InvalidRequest(
                f"'{where}.tool_call_id' is required for tool messages.",
                param=f"{where}.tool_call_id",
            )
        if has_tool_calls:
            _tool_calls(message["tool_calls"], f"{where}.tool_calls")
    return value


def _content_parts(parts: list[Any], where: str) -> None:
    if not parts:
        raise InvalidRequest(f"'{where}' must not be an empty array.", param=where)
    for j, part in enumerate(parts):
        at = f"{where}[{j}]"
        if not isinstance(part, dict) or part.get("type") not in CONTENT_PART_TYPES:
            raise InvalidRequest(
                f"'{at}.type' must be one of {sorted(CONTENT_PART_TYPES)}.", param=f"{at}.type"
            )
        kind = part["type"]
        if kind == "text" and not isinstance(part.get("text"), str):
            raise InvalidRequest(f"'{at}.text' must be a string.", param=f"{at}.text")
        if kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str) or not url.startswith(("data:", "http://", "https://")):
                raise InvalidRequest(
                    f"'{at}.image_url.url' must be a data: URL or an http(s) URL.",
                    param=f"{at}.image_url.url",
                )
            if url.startswith("data:"):
                _image_data_url(url, f"{at}.image_url.url")


# An image as a data: URL: an image type (or none: adapters sniff the bytes), base64, data.
_IMAGE_DATA_URL = re.compile(r"data:(image/[a-z0-9.+-]+)?(;[a-z0-9.+-]+=[^,;]*)*;base64,", re.I)
_BASE64_DATA = re.compile(r"\s*[A-Za-z0-9+/_\-][A-Za-z0-9+/_\-\s]*=*\s*")


def _image_data_url(url: str, param: str) -> None:
    """Refuse, before anything is queued, what no provider can decode as an image."""
    head = _IMAGE_DATA_URL.match(url)
    if head is None or _BASE64_DATA.fullmatch(url, head.end()) is None:
        raise InvalidRequest(
            f"'{param}' must be a base64 data: URL of an image (data:image/png;base64,...).",
            param=param,
            code="invalid_image_url",
        )


def _tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, list):
        raise InvalidRequest(f"'{where}' must be an array.", param=where)
    for k, call in enumerate(calls):
        at = f"{where}[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(call, dict)
            or not isinstance(call.get("id"), str)
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments", ""), str)
        ):
            raise InvalidRequest(
                f"'{at}' must have an 'id' and a 'function' with 'name' and string 'arguments'.",
                param=at,
            )


def _tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequest(f"'{at}' must be {{'type': 'function', 'function': {{...}}}}.", param=at)
        name = function.get("name")
        if not isinstance(name, str) or not FUNCTION_NAME.match(name):
            raise InvalidRequest(
                f"'{at}.function.name' must match ^[a-zA-Z0-9_-]{{1,64}}$.",
                param=f"{at}.function.name",
            )
        params = function.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidRequest(
                f"'{at}.function.parameters' must be a JSON Schema object.",
                param=f"{at}.function.parameters",
            )


def _tool_choice(choice: Any, *, has_tools: bool) -> None:
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in {"none", "auto", "required"}:
            raise InvalidRequest(
                "'tool_choice' must be 'none', 'auto', 'required' or a named function.",
                param="tool_choice",
            )
        if choice == "required" and not has_tools:
            raise InvalidRequest("'tool_choice' is 'required' but no 'tools' were given.", param="tool_choice")
        return
    if isinstance(choice, dict) and choice.get("type") in {"function", "allowed_tools"}:
        if not has_tools:
            raise InvalidRequest("'tool_choice' names a tool but no 'tools' were given.", param="tool_choice")
        return
    raise InvalidRequest("'tool_choice' is not valid.", param="tool_choice")


def _response_format(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") not in RESPONSE_FORMATS:
        raise InvalidRequest(
            f"'response_format.type' must be one of {sorted(RESPONSE_FORMATS)}.",
            param="response_format",
        )
    if value["type"] == "json_schema":
        schema = value.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
            raise InvalidRequest(
                "'response_format.json_schema' needs a 'name' (and usually a 'schema').",
                param="response_format.json_schema",
            )


def _stop(value: Any) -> None:
    if value is None or isinstance(value, str):
        return
    if isinstance(value, list) and len(value) <= 4 and all(isinstance(s, str) for s in value):
        return
    raise InvalidRequest("'stop' must be a string or an array of at most 4 strings.", param="stop")


def _optional(
    body: Mapping[str, Any], name: str, kind: type, default: Any, param: str | None = None
) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise InvalidRequest(f"'{param or name}' must be a {kind.__name__}.", param=param or name)
    return value


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be a number between {low} and {high}.", param=name)


def _integer(body: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be an integer between {low} and {high}.", param=name)
    return value
