"""Reading OpenAI-shaped chat requests (OpenAI and Together) into the neutral `Ask`."""

from __future__ import annotations

from typing import Any

from services.fake_provider.behaviour import FIRST_TOOL, Ask, BadRequest, Tool


def message_text(message: object) -> str:
    """A message's text: string content, or its `text` parts joined by spaces."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def count_prompt_tokens(messages: list[Any]) -> int:
    # count_tokens() inlined: this runs on every request.
    return sum(len(message_text(m).split()) + 4 for m in messages)


def parse_chat(body: Any, wire: str) -> Ask:
    """A chat-completions body (OpenAI or Together) as an `Ask`; raises `BadRequest`."""
    if body is None:
        raise BadRequest("We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array.", "messages")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean.", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object.", "stream_options")
    max_tokens = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"'{name}' must be a positive integer.", name)
        max_tokens = value
        break
    last_user = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    tools, forced, off = _tools(body) if "tools" in body else ((), None, False)
    return Ask(
        wire=wire,
        model=model,
        stream=bool(stream),
        max_tokens=max_tokens,
        prompt_tokens=count_prompt_tokens(messages),
        user_text=message_text(last_user),
        images=_images(last_user),
        tool_results=_tool_results(messages),
        tools=tools,
        forced_tool=forced,
        tools_off=off,
        include_usage=bool(stream and options and options.get("include_usage") is True),
    )


def _images(message: object) -> int:
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return 0
    return sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")


def _tool_results(messages: list[Any]) -> tuple[str, ...] | None:
    """The trailing `tool` messages' contents, oldest first; None when the last isn't one."""
    results: list[str] = []
    for message in reversed(messages):
        if not (isinstance(message, dict) and message.get("role") == "tool"):
            break
        results.append(message_text(message))
    return tuple(reversed(results)) if results else None


def _tools(body: dict[str, Any]) -> tuple[tuple[Tool, ...], str | None, bool]:
    raw = body.get("tools")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise BadRequest("'tools' must be an array.", "tools")
    tools = []
    for i, item in enumerate(raw):
        function = item.get("function") if isinstance(item, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not isinstance(name, str) or not name:
            raise BadRequest(f"'tools[{i}].function.name' is required.", f"tools[{i}]")
        tools.append(Tool(name=name, parameters=function.get("parameters")))
    choice = body.get("tool_choice")
    if choice == "none":
        return tuple(tools), None, True
    if choice == "required":
        return tuple(tools), FIRST_TOOL, False
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest("'tool_choice.function.name' is required.", "tool_choice")
        return tuple(tools), name, False
    return tuple(tools), None, False
