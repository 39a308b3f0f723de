"""OpenAI tools, tool_choice and response_format -> Anthropic tools (wire-formats doc §2.3, §2.2).

    tools[].function        -> {name, description, input_schema} (empty object schema if none)
    tool_choice             -> auto / none / any / {"type": "tool", "name"}; allowed_tools
                               offers only the allowed tools
    parallel_tool_calls off -> disable_parallel_tool_use on the choice
    response_format json_*  -> a synthetic tool, `JSON_TOOL_NAME`, that the model must call
                               with its answer; response.py and stream.py turn it back into
                               `content` with finish_reason `stop`
    tool history, no tools  -> the tools the history names, with tool_choice none
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.worker.providers.anthropic.errors import invalid

# The synthetic tool that carries JSON-mode answers (§2.2 "portable fallback"). Native
# `output_config.format` exists only on recent models; a forced tool works on every
# Claude model in the catalog. Clients may not define a tool of this name.
JSON_TOOL_NAME = "gateway_json_response"
_JSON_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {},
    "additionalProperties": True,
}
EMPTY_INPUT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def translate_tools(
    body: Mapping[str, Any], turns: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(Anthropic tools, tool_choice) for the request; `turns` are the translated messages,
    whose tool history needs tool definitions even when the client sent none."""
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
