"""Reading Gemini `generateContent` requests into the neutral `Ask`.

The model and the action come from the URL (`models/{model}:{action}`). Field names are
proto-JSON camelCase; the API also accepts snake_case, so both are read.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from services.fake_provider.behaviour import FIRST_TOOL, Ask, BadRequest, Tool
from services.fake_provider.pieces import count_tokens

GEMINI_ACTIONS = frozenset({"generateContent", "streamGenerateContent"})
_IMAGE_KEYS = ("inlineData", "inline_data", "fileData", "file_data")


def _get(obj: object, camel: str, snake: str) -> Any:
    """A field by its camelCase or snake_case name; None when `obj` is not an object."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


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
        response = _get(part, "functionResponse", "function_response")
        if isinstance(response, dict):
            found.append(orjson.dumps(response.get("response")).decode())
    return found


def _tools(body: dict[str, Any]) -> tuple[tuple[Tool, ...], str | None, bool]:
    tools = []
    raw = body.get("tools") or []
    if not isinstance(raw, list):
        raise BadRequest("Invalid value at 'tools': expected a list.")
    for entry in raw:
        declarations = _get(entry, "functionDeclarations", "function_declarations")
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
    calling = _get(config, "functionCallingConfig", "function_calling_config")
    mode = str(calling.get("mode") or "").upper() if isinstance(calling, dict) else ""
    if mode == "NONE":
        return tuple(tools), None, True
    if mode == "ANY":
        names = _get(calling, "allowedFunctionNames", "allowed_function_names")
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
    max_tokens = _get(config, "maxOutputTokens", "max_output_tokens")
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
