"""OpenAI chat request -> Anthropic Messages request (wire-formats doc §2.1-§2.3, §5.3).

Built strictly: only fields Anthropic documents are sent. OpenAI parameters with no
Anthropic meaning are dropped (§5.3: seed, logprobs, penalties, ...); the ones whose loss
would change the answer the client asked for (n > 1, temperature above 1, tool arguments
that are not JSON, content Anthropic cannot read) are refused with a 400 naming the
parameter, before any call is made.

Shape of the translation:

    system / developer messages     -> top-level `system` (text blocks, in order)
    user / assistant / tool turns   -> alternating `messages` (same-role turns merged;
                                       tool results become `tool_result` blocks of a
                                       user turn, placed first as Anthropic requires)
    tools / tool_choice / parallel  -> `tools`, `tool_choice` (+ disable_parallel_tool_use)
    response_format json_*          -> a forced synthetic tool (`JSON_TOOL_NAME`) whose
                                       input is the answer; response.py and stream.py turn
                                       it back into `content` with finish_reason `stop`
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

from services.worker.providers.base import ChatRequest, HttpCall, Target
from shared.catalog import Offer
from shared.errors import FinalProviderError

ANTHROPIC_VERSION = "2023-06-01"

# The synthetic tool that carries JSON-mode answers (§2.2 "portable fallback"). Native
# `output_config.format` exists only on recent models; a forced tool works on every
# Claude model in the catalog. Clients may not define a tool of this name.
JSON_TOOL_NAME = "gateway_json_response"
_JSON_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {},
    "additionalProperties": True,
}

IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_MEDIA_ALIASES = {"image/jpg": "image/jpeg"}
EMPTY_INPUT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}

_TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")
_NOT_TOOL_ID_CHAR = re.compile(r"[^a-zA-Z0-9_-]")


def build_request(req: ChatRequest, target: Target) -> HttpCall:
    """The HTTP call for `POST {base_url}/messages`; raises a 400 `FinalProviderError`
    for a request Anthropic cannot honour."""
    try:
        body = translate_body(req.body, target.offer, stream=req.stream)
    except FinalProviderError as exc:
        exc.provider = target.name
        raise
    headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
    if target.api_key:
        headers["x-api-key"] = target.api_key
    return HttpCall(
        method="POST",
        url=f"{target.base_url.rstrip('/')}/messages",
        headers=headers,
        body=orjson.dumps(body),
    )


def translate_body(body: Mapping[str, Any], offer: Offer, *, stream: bool) -> dict[str, Any]:
    """The Anthropic request body for an OpenAI chat request body."""
    _refuse_unsupported(body)
    system, messages = translate_messages(body.get("messages"))
    out: dict[str, Any] = {
        "model": offer.upstream_model,
        "max_tokens": _max_tokens(body, offer),
        "messages": messages,
    }
    if system:
        out["system"] = system
    _sampling(body, out)
    stop = _stop_sequences(body.get("stop"))
    if stop:
        out["stop_sequences"] = stop
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    tools, tool_choice = _tools(body, messages)
    if tools:
        out["tools"] = tools
        if tool_choice is not None:
            out["tool_choice"] = tool_choice
    if stream:
        out["stream"] = True
    return out


def anthropic_tool_id(call_id: str) -> str:
    """`call_id` as a valid Anthropic tool id (^[a-zA-Z0-9_-]+$), the same every time.

    Valid ids pass unchanged; any other id gets its bad characters replaced and a short
    digest of the original appended, so two different ids never meet in one request.
    """
    if _TOOL_ID.fullmatch(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode()).hexdigest()[:12]
    return f"{_NOT_TOOL_ID_CHAR.sub('_', call_id)}_{digest}"


# -- errors ---------------------------------------------------------------------------


def invalid(message: str, param: str | None, code: str = "invalid_value") -> FinalProviderError:
    """A 400 for the client: the request cannot be expressed for Anthropic."""
    return FinalProviderError(
        message, status=400, error_type="invalid_request_error", code=code, param=param
    )


def _unsupported(param: str, why: str) -> FinalProviderError:
    message = f"'{param}' is not supported by Anthropic models: {why}"
    return invalid(message, param, code="unsupported_parameter")


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise _unsupported("n", "only one choice can be generated per request.")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise _unsupported(legacy, "use 'tools' and 'tool_choice' instead.")


# -- scalar parameters --------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _max_tokens(body: Mapping[str, Any], offer: Offer) -> int:
    # Anthropic requires max_tokens; without the client's, the model's own output limit
    # from the catalog is the one that truncates nothing.
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid(f"'{name}' must be a positive integer.", name)
        return value
    return offer.max_output_tokens


def _sampling(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    temperature = body.get("temperature")
    if temperature is not None:
        if not _is_number(temperature) or not 0 <= temperature <= 1:
            # OpenAI allows up to 2; clamping would quietly change the sampling asked for.
            raise invalid(
                "'temperature' must be between 0 and 1 for Anthropic models.", "temperature"
            )
        out["temperature"] = temperature
    top_p = body.get("top_p")
    if top_p is not None:
        if not _is_number(top_p) or not 0 <= top_p <= 1:
            raise invalid("'top_p' must be between 0 and 1.", "top_p")
        # Recent Claude models refuse a request that sets both (§2.2); the temperature is
        # the setting clients mean, top_p usually rides along at its default.
        if temperature is None:
            out["top_p"] = top_p


def _stop_sequences(stop: object) -> list[str]:
    if stop is None:
        return []
    sequences = [stop] if isinstance(stop, str) else stop
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        raise invalid("'stop' must be a string or an array of strings.", "stop")
    for sequence in sequences:
        if not sequence.strip():
            raise invalid(
                "Anthropic models reject stop sequences that are empty or only whitespace.",
                "stop",
            )
    return list(sequences)


# -- messages ------------------------------------------------------------------------


def translate_messages(raw: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system text blocks, alternating user/assistant turns) for OpenAI `messages`."""
    if not isinstance(raw, list) or not raw:
        raise invalid("'messages' must be a non-empty array.", "messages")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(f"'{where}' must be an object.", where)
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_system_blocks(message.get("content"), f"{where}.content"))
            continue
        if role == "user":
            anthropic_role, blocks = "user", _user_blocks(message.get("content"), where)
            if not blocks:
                raise invalid(
                    f"'{where}.content' is empty; Anthropic models reject empty messages.",
                    f"{where}.content",
                )
        elif role == "assistant":
            anthropic_role, blocks = "assistant", _assistant_blocks(message, where)
            if not blocks:
                continue  # an empty assistant turn carries nothing to the model
        elif role == "tool":
            anthropic_role, blocks = "user", [_tool_result(message, where)]
        else:
            raise _unsupported(f"{where}.role", f"role {role!r} cannot be translated.")
        # Anthropic wants alternating turns: a run of same-role messages is one turn.
        if turns and turns[-1]["role"] == anthropic_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": anthropic_role, "content": blocks})
    if not turns:
        raise invalid("'messages' needs at least one user or assistant message.", "messages")
    for turn in turns:
        if turn["role"] == "user":
            # tool_result blocks must open their user turn; keep everything else in order.
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    _trim_prefill(turns)
    return system, turns


def _trim_prefill(turns: list[dict[str, Any]]) -> None:
    # A final assistant turn is a prefill, and Anthropic rejects one ending in whitespace.
    last = turns[-1]
    if last["role"] != "assistant" or last["content"][-1]["type"] != "text":
        return
    block = last["content"][-1]
    block["text"] = block["text"].rstrip()
    if not block["text"]:
        last["content"].pop()
        if not last["content"]:
            turns.pop()
            if not turns:
                raise invalid("'messages' needs at least one user message.", "messages")


def _text(text: str) -> list[dict[str, Any]]:
    # Anthropic rejects empty and whitespace-only text blocks.
    return [{"type": "text", "text": text}] if text.strip() else []


def _parts(content: object, where: str) -> list[Any]:
    if isinstance(content, list):
        return content
    raise invalid(f"'{where}' must be a string or an array of content parts.", where)


def _system_blocks(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return _text(content)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(_parts(content, where)):
        text = part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None
        if not isinstance(text, str):
            raise invalid(f"'{where}[{j}]' must be a text part.", f"{where}[{j}]")
        blocks.extend(_text(text))
    return blocks


def _user_blocks(content: object, where: str) -> list[dict[str, Any]]:
    at = f"{where}.content"
    if isinstance(content, str):
        return _text(content)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(_parts(content, at)):
        part_at = f"{at}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            blocks.extend(_text(part["text"]))
        elif kind == "image_url":
            blocks.append(_image_block(part, part_at))
        elif kind == "file":
            blocks.append(_document_block(part, part_at))
        elif kind == "input_audio":
            raise _unsupported(part_at, "audio input cannot be sent to Anthropic models.")
        else:
            raise invalid(f"'{part_at}' is not a supported content part.", part_at)
    return blocks


def _data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:<type>;base64,<data>` URL, else None."""
    header, comma, data = url.removeprefix("data:").partition(",")
    media_type, *params = header.split(";")
    if not comma or "base64" not in params or not data:
        return None
    media_type = media_type.strip().lower()
    return _MEDIA_ALIASES.get(media_type, media_type), data


def _image_block(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    at = f"{where}.image_url.url"
    if not isinstance(url, str):
        raise invalid(f"'{at}' must be a string.", at)
    if url.startswith("data:"):
        decoded = _data_url(url)
        if decoded is None:
            raise invalid(f"'{at}' must be a base64 data URL (data:image/png;base64,...).", at)
        media_type, data = decoded
        if media_type not in IMAGE_MEDIA_TYPES:
            raise invalid(
                f"'{at}' has media type {media_type!r}; Anthropic models read "
                f"{', '.join(sorted(IMAGE_MEDIA_TYPES))}.",
                at,
            )
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid(f"'{at}' must be a data: URL or an http(s) URL.", at)


def _document_block(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    file = part.get("file")
    file_data = file.get("file_data") if isinstance(file, dict) else None
    decoded = _data_url(file_data) if isinstance(file_data, str) else None
    if decoded is None or decoded[0] != "application/pdf":
        raise _unsupported(
            f"{where}.file", "only PDF files sent inline as a base64 data URL can be read."
        )
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": decoded[1]},
    }


def _assistant_blocks(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    content = message.get("content")
    at = f"{where}.content"
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        blocks.extend(_text(content))
    elif content is not None:
        for j, part in enumerate(_parts(content, at)):
            kind = part.get("type") if isinstance(part, dict) else None
            field = "text" if kind == "text" else "refusal" if kind == "refusal" else None
            if field is None or not isinstance(part.get(field), str):
                raise invalid(f"'{at}[{j}]' must be a text or refusal part.", f"{at}[{j}]")
            blocks.extend(_text(part[field]))
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise invalid(f"'{where}.tool_calls' must be an array.", f"{where}.tool_calls")
    blocks.extend(_tool_use(call, f"{where}.tool_calls[{k}]") for k, call in enumerate(calls))
    return blocks


def _tool_use(call: object, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if (
        not isinstance(call, dict)
        or call.get("type", "function") != "function"
        or not isinstance(call.get("id"), str)
        or not isinstance(function, dict)
        or not isinstance(function.get("name"), str)
    ):
        raise invalid(f"'{where}' must be a function call with an 'id' and a 'name'.", where)
    arguments = function.get("arguments") or "{}"
    at = f"{where}.function.arguments"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else None
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise invalid(f"'{at}' must be a JSON object encoded as a string.", at)
    return {
        "type": "tool_use",
        "id": anthropic_tool_id(call["id"]),
        "name": function["name"],
        "input": parsed,
    }


def _tool_result(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        at = f"{where}.tool_call_id"
        raise invalid(f"'{at}' is required for tool messages.", at)
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": anthropic_tool_id(call_id)}
    content = message.get("content")
    if isinstance(content, str):
        if content.strip():
            block["content"] = content
    elif content is not None:
        texts = _system_blocks(content, f"{where}.content")  # tool results are text parts
        if texts:
            block["content"] = texts
    return block


# -- tools ---------------------------------------------------------------------------


def _tools(
    body: Mapping[str, Any], turns: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    raw_tools = body.get("tools") or []
    if not isinstance(raw_tools, list):
        raise invalid("'tools' must be an array.", "tools")
    tools = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(raw_tools)]
    names = [tool["name"] for tool in tools]
    if JSON_TOOL_NAME in names:
        at = f"tools[{names.index(JSON_TOOL_NAME)}].function.name"
        raise invalid(f"The tool name {JSON_TOOL_NAME!r} is reserved by the gateway.", at)
    choice, allowed = _tool_choice(body.get("tool_choice"), names) if tools else (None, None)
    if allowed is not None:
        # Anthropic has no "allowed subset" choice: offer only those tools instead.
        tools = [tool for tool in tools if tool["name"] in allowed]

    json_tool = _json_tool(body.get("response_format"))
    if json_tool is not None:
        offered = bool(tools) and (choice is None or choice["type"] in ("auto", "any"))
        tools.append(json_tool)
        if offered:
            # The model may still call the client's tools; when it answers, it answers
            # through the JSON tool.
            choice = {"type": "any"}
        elif choice is None or choice["type"] != "tool":
            choice = {"type": "tool", "name": JSON_TOOL_NAME}

    if not tools and _uses_tools(turns):
        # Anthropic refuses tool_use/tool_result history without tool definitions; declare
        # the tools the history names, and forbid new calls as the client offered none.
        used = (block for turn in turns for block in turn["content"])
        seen = dict.fromkeys(block["name"] for block in used if block["type"] == "tool_use")
        tools = [{"name": name, "input_schema": dict(EMPTY_INPUT_SCHEMA)} for name in seen]
        return tools, ({"type": "none"} if tools else None)

    if tools and body.get("parallel_tool_calls") is False:
        if choice is None:
            choice = {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    return tools, choice


def _uses_tools(turns: list[dict[str, Any]]) -> bool:
    return any(
        block["type"] in ("tool_use", "tool_result") for turn in turns for block in turn["content"]
    )


def _tool(tool: object, where: str) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if (
        not isinstance(tool, dict)
        or tool.get("type") != "function"
        or not isinstance(function, dict)
        or not isinstance(function.get("name"), str)
    ):
        raise invalid(f"'{where}' must be a function tool with a 'name'.", where)
    out: dict[str, Any] = {
        "name": function["name"],
        "input_schema": _object_schema(function.get("parameters"), f"{where}.function.parameters"),
    }
    description = function.get("description")
    if isinstance(description, str) and description:
        out["description"] = description
    return out


def _object_schema(schema: object, where: str) -> dict[str, Any]:
    if schema is None:
        return dict(EMPTY_INPUT_SCHEMA)
    if not isinstance(schema, dict):
        raise invalid(f"'{where}' must be a JSON Schema object.", where)
    kind = schema.get("type")
    if kind is None:
        return {"type": "object", **schema}
    if kind != "object":
        raise invalid(f"'{where}' must describe an object (type 'object').", where)
    return dict(schema)


def _tool_choice(
    choice: object, names: list[str]
) -> tuple[dict[str, Any] | None, frozenset[str] | None]:
    """(Anthropic tool_choice, the tool names to offer when the client narrowed them)."""
    if choice is None:
        return None, None
    simple = {"auto": "auto", "required": "any", "none": "none"}
    if isinstance(choice, str) and choice in simple:
        return {"type": simple[choice]}, None
    if not isinstance(choice, dict) or choice.get("type") not in ("function", "allowed_tools"):
        raise invalid(
            "'tool_choice' must be 'none', 'auto', 'required' or a named function.", "tool_choice"
        )
    if choice["type"] == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if name not in names:
            raise invalid("'tool_choice' names a function that is not in 'tools'.", "tool_choice")
        return {"type": "tool", "name": name}, None
    spec = choice.get("allowed_tools")
    spec = spec if isinstance(spec, dict) else {}
    mode = spec.get("mode")
    listed = spec.get("tools")
    listed = listed if isinstance(listed, list) else []
    allowed = frozenset(
        t["function"].get("name")
        for t in listed
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ) & frozenset(names)
    if mode not in ("auto", "required") or not allowed:
        raise invalid(
            "'tool_choice.allowed_tools' needs a mode ('auto' or 'required') and tools named "
            "in 'tools'.",
            "tool_choice",
        )
    return {"type": simple[mode]}, allowed


def _json_tool(response_format: object) -> dict[str, Any] | None:
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return {
            "name": JSON_TOOL_NAME,
            "description": "Give your whole answer as a JSON object through this tool.",
            "input_schema": dict(_JSON_OBJECT_SCHEMA),
        }
    if kind != "json_schema":
        return None
    spec = response_format.get("json_schema")
    spec = spec if isinstance(spec, dict) else {}
    schema = spec.get("schema")
    where = "response_format.json_schema.schema"
    input_schema = dict(_JSON_OBJECT_SCHEMA) if schema is None else _object_schema(schema, where)
    description = spec.get("description")
    return {
        "name": JSON_TOOL_NAME,
        "description": description
        if isinstance(description, str) and description
        else "Give your whole answer as JSON matching this schema through this tool.",
        "input_schema": input_schema,
    }
