from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.api.validation import parse_chat_body
from shared.errors import InvalidRequest

GOOD: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def body(**changes: Any) -> bytes:
    data = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in data.items() if v is not ...})


class TestParseChatBody:
    def test_minimal_request(self) -> None:
        parsed = parse_chat_body(body())
        assert parsed.model == "gpt-4o-mini"
        assert parsed.stream is False
        assert parsed.include_usage is False
        assert parsed.n == 1

    def test_stream_with_usage(self) -> None:
        parsed = parse_chat_body(body(stream=True, stream_options={"include_usage": True}))
        assert parsed.stream and parsed.include_usage

    def test_max_completion_tokens_preferred(self) -> None:
        assert parse_chat_body(body(max_tokens=5, max_completion_tokens=9)).max_output_tokens == 9
        assert parse_chat_body(body(max_tokens=5)).max_output_tokens == 5

    def test_tool_conversation(self) -> None:
        messages = [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ]
        tools = [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}]
        parsed = parse_chat_body(body(messages=messages, tools=tools, tool_choice="auto"))
        assert len(parsed.messages) == 3

    def test_vision_parts(self) -> None:
        content = [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]
        parse_chat_body(body(messages=[{"role": "user", "content": content}]))

    @pytest.mark.parametrize(
        ("raw", "param"),
        [
            (b"", None),
            (b"not json", None),
            (b"[1, 2]", None),
            (body(model=...), "model"),
            (body(model=""), "model"),
            (body(model=3), "model"),
            (body(messages=...), "messages"),
            (body(messages=[]), "messages"),
            (body(messages="hi"), "messages"),
            (body(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
            (body(messages=[{"role": "user"}]), "messages[0].content"),
            (body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
            (body(messages=[{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
            (body(messages=[{"role": "user", "content": [{"type": "video"}]}]), "messages[0].content[0].type"),
            (
                body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]),
                "messages[0].content[0].image_url.url",
            ),
            (body(temperature=3), "temperature"),
            (body(temperature="hot"), "temperature"),
            (body(top_p=-1), "top_p"),
            (body(n=0), "n"),
            (body(n=True), "n"),
            (body(max_tokens=0), "max_tokens"),
            (body(max_tokens=1.5), "max_tokens"),
            (body(stream="yes"), "stream"),
            (body(stream_options={"include_usage": True}), "stream_options"),
            (body(stop=["a", "b", "c", "d", "e"]), "stop"),
            (body(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools[0].function.name"),
            (body(tools={"a": 1}), "tools"),
            (body(tool_choice="required"), "tool_choice"),
            (body(tool_choice="sometimes"), "tool_choice"),
            (body(response_format={"type": "yaml"}), "response_format"),
            (body(response_format={"type": "json_schema"}), "response_format.json_schema"),
            (body(bogus_field=1), "bogus_field"),
            (body(metadata=[1]), "metadata"),
        ],
    )
    def test_rejects_with_param(self, raw: bytes, param: str | None) -> None:
        with pytest.raises(InvalidRequest) as info:
            parse_chat_body(raw)
        error = info.value
        assert error.http_status == 400
        assert error.param == param
        envelope = orjson.loads(error.to_body())["error"]
        assert set(envelope) == {"message", "type", "param", "code"}
        assert envelope["type"] == "invalid_request_error"
