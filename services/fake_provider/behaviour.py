"""What the fake provider answers, whatever the wire format it is spoken to in.

A wire module reads a request into an `Ask`: the few neutral facts the behaviour depends
on (model, prompt size, the last user message's text and images, offered tools, tool
results). `decide()` turns it into a `Plan`: the step (timing and failure, from the
server's config, the script queue and `[[fake:...]]` directives), then either text pieces
or tool calls, the finish and the token counts. Renderers only encode a plan.

The rules, identical for every wire:

- the last message carries tool results → text `Tool result received: r1; r2`;
- tools are offered and a `tool`/`tools` directive or a forced tool choice asks for
  them → tool calls, with arguments made up from each tool's JSON schema;
- otherwise the configured reply, prefixed `I see N image(s). ` when the last user
  message holds N images, cut into `chunks` pieces and stopped early by max tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from services.fake_provider.script import Script, ScriptError, Step

FIRST_TOOL = "*"  # a forced tool choice without a name ("required", "any", mode ANY)
TOOL_RESULT_PREFIX = "Tool result received: "

# The argument value made up for a schema property of each JSON type.
_SAMPLES: dict[str, Any] = {
    "string": "Paris",
    "integer": 1,
    "number": 1.5,
    "boolean": True,
    "array": [],
    "object": {},
}

Splitter = Callable[[str, int], tuple[str, ...]]


class BadRequest(Exception):
    """The request is malformed for its wire; answered with a 400 in that wire's shape."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    parameters: object  # the JSON schema of the arguments, as sent (may be None)


# Ask and Plan are built once per request and never changed; they are not frozen only
# because a frozen dataclass's __init__ costs ~2 µs more, on the fake's hottest path.
@dataclass(slots=True)
class Ask:
    """The neutral facts of one request."""

    wire: str
    model: str
    stream: bool
    max_tokens: int | None
    prompt_tokens: int
    user_text: str = ""  # the last user message's text, where directives are looked for
    images: int = 0  # images in the last user message
    tool_results: tuple[str, ...] | None = None  # set when the last message holds results
    tools: tuple[Tool, ...] = ()
    forced_tool: str | None = None  # a tool name, FIRST_TOOL, or None (the model chooses)
    tools_off: bool = False  # tool choice "none": never call a tool
    include_usage: bool = False  # OpenAI `stream_options.include_usage`


class Finish(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    arguments_json: str  # compact JSON of `arguments`
    pieces: tuple[str, ...]  # `arguments_json` cut for streaming (at least 2 pieces)


@dataclass(slots=True)
class Plan:
    """The answer to one request, however it is delivered."""

    step: Step
    prompt_tokens: int
    text: tuple[str, ...] = ()  # the reply's pieces (empty when calling tools)
    tool_calls: tuple[ToolCall, ...] = ()
    finish: Finish = Finish.STOP

    @property
    def failed(self) -> bool:
        """The step asks for an error status (hangs are checked first)."""
        return self.step.status is not None and self.step.status != 200

    @property
    def completion_tokens(self) -> int:
        """Text pieces, or the argument pieces of all tool calls."""
        if self.tool_calls:
            return sum(len(call.pieces) for call in self.tool_calls)
        return len(self.text)


def decide(ask: Ask, *, base: Step, script: Script, split: Splitter) -> Plan:
    """The server's config (`base`), overlaid by the next queued step, then by directives."""
    step = base
    queued = script.take(ask.model, ask.wire)
    if queued is not None:
        step = queued.over(step)
    try:
        directives = Step.from_directives(ask.user_text)
    except ScriptError as exc:
        raise BadRequest(str(exc), "messages") from exc
    if directives is not None:
        step = directives.over(step)
    if step.hang or (step.status is not None and step.status != 200):
        return Plan(step=step, prompt_tokens=ask.prompt_tokens)

    count = step.chunks if step.chunks is not None else 1
    if ask.tool_results is not None:
        return _text(step, ask, TOOL_RESULT_PREFIX + "; ".join(ask.tool_results), count, split)
    wanted = _wanted_tools(step, ask)
    if wanted:
        schemas = {tool.name: tool.parameters for tool in ask.tools}
        calls = tuple(_tool_call(name, schemas[name], count, split) for name in wanted)
        return Plan(
            step=step, prompt_tokens=ask.prompt_tokens, tool_calls=calls, finish=Finish.TOOL_CALLS
        )
    reply = step.reply or ""
    if ask.images:
        reply = f"I see {ask.images} image(s). {reply}"
    return _text(step, ask, reply, count, split)


def _text(step: Step, ask: Ask, text: str, count: int, split: Splitter) -> Plan:
    pieces = split(text, count)
    finish = Finish.STOP
    if ask.max_tokens is not None and ask.max_tokens < len(pieces):
        pieces = pieces[: ask.max_tokens]
        finish = Finish.LENGTH
    return Plan(step=step, prompt_tokens=ask.prompt_tokens, text=pieces, finish=finish)


def _wanted_tools(step: Step, ask: Ask) -> list[str]:
    """The tools to call, in order; empty for a text answer."""
    if ask.tools_off:
        return []
    if step.tools:
        names = [name.strip() for name in step.tools.split("+") if name.strip()]
    elif step.tool:
        names = [step.tool.strip()]
    elif ask.forced_tool is not None and ask.tools:
        forced = ask.forced_tool
        names = [ask.tools[0].name if forced == FIRST_TOOL else forced]
    else:
        return []
    offered = {tool.name for tool in ask.tools}
    for name in names:
        if name not in offered:
            listed = ", ".join(sorted(offered)) or "none"
            raise BadRequest(
                f"Tool {name!r} is not among the tools offered by this request ({listed}).",
                "tools",
            )
    return names


def _tool_call(name: str, schema: object, count: int, split: Splitter) -> ToolCall:
    arguments = make_arguments(schema)
    arguments_json = orjson.dumps(arguments).decode()
    return ToolCall(
        name=name,
        arguments=arguments,
        arguments_json=arguments_json,
        pieces=split(arguments_json, max(count, 2)),
    )


def make_arguments(schema: object) -> dict[str, Any]:
    """Arguments for a JSON schema: every required property, else the first property.

    Values by type: string "Paris", integer 1, number 1.5, boolean true, array [],
    object {}; a property without a known type gets a string.
    """
    if not isinstance(schema, Mapping):
        return {}
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        properties = {}
    required = schema.get("required")
    names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
    if not names:
        names = [n for n in properties if isinstance(n, str)][:1]
    return {name: _sample(properties.get(name)) for name in names}


def _sample(prop: object) -> Any:
    kind = prop.get("type") if isinstance(prop, Mapping) else None
    if isinstance(kind, list):  # ["string", "null"]
        kind = next((k for k in kind if isinstance(k, str) and k.lower() != "null"), None)
    value = _SAMPLES.get(kind.lower(), "Paris") if isinstance(kind, str) else "Paris"
    return type(value)() if isinstance(value, (list, dict)) else value
