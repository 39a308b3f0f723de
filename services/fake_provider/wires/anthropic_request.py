"""Reading Anthropic Messages requests into the neutral `Ask`.

Checks what the real API insists on: the `anthropic-version` header, `model`, a non-empty
`messages` list and `max_tokens`. Turn order is not checked. The top-level `system` counts
as one more message for the prompt tokens.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.fake_provider.behaviour import FIRST_TOOL, Ask, BadRequest, Tool
from services.fake_provider.pieces import count_tokens


def _blocks_text(content: object, *, results: bool = False) -> str:
    """String content, or the `text` blocks joined by spaces (and tool results' text)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text") or ""))
        elif results and block.get("type") == "tool_result":
            texts.append(_blocks_text(block.get("content")))
    return " ".join(texts)


def _tool_results(message: object) -> tuple[str, ...] | None:
    if not isinstance(message, dict) or message.get("role") != "user":
        return None
    content = message.get("content")
    if not isinstance(content, list):
        return None
    results = tuple(
        _blocks_text(b.get("content"))
        for b in content
        if isinstance(b, dict) and b.get("type") == "tool_result"
    )
    return results or None


def _tools(body: dict[str, Any]) -> tuple[tuple[Tool, ...], str | None, bool]:
    raw = body.get("tools") or []
    if not isinstance(raw, list):
        raise BadRequest("tools: Input should be a valid list")
    tools = []
    for i, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools.{i}.name: Field required")
        tools.append(Tool(name=name, parameters=item.get("input_schema")))
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "none":
        return tuple(tools), None, True
    if kind == "any":
        return tuple(tools), FIRST_TOOL, False
    if kind == "tool":
        name = choice.get("name")  # type: ignore[union-attr]
        if not isinstance(name, str) or not name:
            raise BadRequest("tool_choice.tool.name: Field required")
        return tuple(tools), name, False
    return tuple(tools), None, False


def parse_messages(request: web.Request, body: Any) -> Ask:
    if not request.headers.get("anthropic-version"):
        raise BadRequest("anthropic-version: header is required")
    if body is None:
        raise BadRequest("There was an error parsing the body of your request as JSON.")
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: at least one message is required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise BadRequest("max_tokens: Field required")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("max_tokens: Input should be an integer greater than or equal to 1")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("stream: Input should be a valid boolean")
    texts = [_blocks_text(m.get("content"), results=True) for m in messages if isinstance(m, dict)]
    if body.get("system"):
        texts.append(_blocks_text(body["system"]))
    last_user = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    content = last_user.get("content") if last_user is not None else None
    images = (
        sum(1 for b in content if isinstance(b, dict) and b.get("type") == "image")
        if isinstance(content, list)
        else 0
    )
    tools, forced, off = _tools(body)
    return Ask(
        wire="anthropic",
        model=model,
        stream=bool(stream),
        max_tokens=max_tokens,
        prompt_tokens=count_tokens(texts),
        user_text=_blocks_text(content),
        images=images,
        tool_results=_tool_results(messages[-1]),
        tools=tools,
        forced_tool=forced,
        tools_off=off,
    )
