"""The Anthropic Messages wire, checked with the official SDK's types and client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from aiohttp.test_utils import TestServer
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter

from services.fake_provider.app import DEFAULT_REPLY, STATE
from services.fake_provider.pieces import split_reply
from tests.unit.fake_provider.conftest import (
    PNG_B64,
    TIME_ARGS,
    TIME_TOOL_SCHEMA,
    WEATHER_ARGS,
    WEATHER_TOOL_SCHEMA,
    Start,
    sse_blocks,
)

HEADERS = {"x-api-key": "sk-ant-fake", "anthropic-version": "2023-06-01"}
TOOLS = [
    {"name": "get_weather", "description": "Weather", "input_schema": WEATHER_TOOL_SCHEMA},
    {"name": "get_time", "description": "Time", "input_schema": TIME_TOOL_SCHEMA},
]
EVENT = TypeAdapter[Any](RawMessageStreamEvent)
TOOL_ID = re.compile(r"^toolu_[0-9a-f]{24}$")


def body(content: Any = "Hi there you", **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-test",
        "max_tokens": 1024,
        "system": "Be nice.",
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


async def post(
    http: aiohttp.ClientSession,
    server: TestServer,
    data: Any,
    headers: dict[str, str] = HEADERS,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    async with http.post(server.make_url("/v1/messages"), data=raw, headers=headers) as resp:
        answer = await resp.read()
    return resp.status, orjson.loads(answer), resp


async def message(http: aiohttp.ClientSession, server: TestServer, data: Any) -> Message:
    status, answer, resp = await post(http, server, data)
    assert status == 200, answer
    assert resp.headers["request-id"].startswith("req_")
    return Message.model_validate(answer)


async def events(
    http: aiohttp.ClientSession, server: TestServer, data: dict[str, Any]
) -> list[dict[str, Any]]:
    """The stream's events, each checked: `event:` name = data type, SDK-valid payload."""
    async with http.post(
        server.make_url("/v1/messages"), json={**data, "stream": True}, headers=HEADERS
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        raw = await resp.read()
    found = []
    for block in sse_blocks(raw):
        name_line, data_line = block.split(b"\n")
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        payload = orjson.loads(data_line[len(b"data: ") :])
        assert payload["type"] == name_line[len(b"event: ") :].decode()
        if payload["type"] not in ("ping", "error"):
            EVENT.validate_python(payload)
        found.append(payload)
    return found


def error_of(answer: Any) -> tuple[str, str]:
    ErrorResponse.model_validate(answer)
    assert answer["request_id"].startswith("req_")
    return answer["type"], answer["error"]["type"]


class TestText:
    async def test_message(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        msg = await message(http, server, body())
        assert msg.model == "claude-test" and msg.role == "assistant"
        assert [b.type for b in msg.content] == ["text"]
        assert msg.content[0].text == DEFAULT_REPLY  # type: ignore[union-attr]
        assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
        # "Be nice." (system) + "Hi there you": 2 + 3 words, + 4 per message.
        assert (msg.usage.input_tokens, msg.usage.output_tokens) == (5 + 8, 8)

    async def test_stream(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        found = await events(http, server, body())
        kinds = [e["type"] for e in found]
        assert kinds == [
            "message_start",
            "ping",
            "content_block_start",
            *["content_block_delta"] * 8,
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        start = found[0]["message"]
        assert start["content"] == [] and start["stop_reason"] is None
        assert start["usage"]["input_tokens"] == 13
        assert found[2]["content_block"] == {"type": "text", "text": ""}
        deltas = [e["delta"] for e in found[3:11]]
        assert all(d["type"] == "text_delta" for d in deltas)
        assert "".join(d["text"] for d in deltas) == DEFAULT_REPLY
        assert {e["index"] for e in found[2:12]} == {0}
        assert found[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
        assert found[-2]["usage"]["output_tokens"] == 8

    async def test_max_tokens(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        msg = await message(http, server, body(max_tokens=3))
        assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 3
        assert msg.content[0].text == "".join(split_reply(DEFAULT_REPLY, 8)[:3])  # type: ignore[union-attr]
        found = await events(http, server, body(max_tokens=3))
        assert sum(e["type"] == "content_block_delta" for e in found) == 3
        assert found[-2]["delta"]["stop_reason"] == "max_tokens"

    async def test_directive_in_text_block(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        content = [{"type": "text", "text": "Hi"}, {"type": "text", "text": "[[fake:chunks=2]]"}]
        found = await events(http, server, body(content))
        assert sum(e["type"] == "content_block_delta" for e in found) == 2

    @pytest.mark.parametrize(
        "source",
        [
            {"type": "base64", "media_type": "image/png", "data": PNG_B64},
            {"type": "url", "url": "https://example.com/cat.jpg"},
        ],
    )
    async def test_images_in_the_last_user_message(
        self, source: dict[str, Any], server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        image = {"type": "image", "source": source}
        data = body([image, {"type": "text", "text": "What is this?"}, image])
        data["messages"].insert(0, {"role": "user", "content": [image]})
        data["messages"].insert(1, {"role": "assistant", "content": "A picture."})
        msg = await message(http, server, data)
        assert msg.content[0].text == "I see 2 image(s). " + DEFAULT_REPLY  # type: ignore[union-attr]


class TestTools:
    async def test_forced_tool(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        msg = await message(
            http, server, body(tools=TOOLS, tool_choice={"type": "tool", "name": "get_time"})
        )
        [block] = msg.content
        assert block.type == "tool_use" and block.name == "get_time"
        assert block.input == TIME_ARGS and TOOL_ID.match(block.id)
        assert msg.stop_reason == "tool_use"

    async def test_any_calls_the_first_tool(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        msg = await message(http, server, body(tools=TOOLS, tool_choice={"type": "any"}))
        assert [(b.type, b.name) for b in msg.content] == [("tool_use", "get_weather")]  # type: ignore[union-attr]

    async def test_directive_parallel_calls(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        msg = await message(
            http, server, body("Go [[fake:tools=get_weather+get_time]]", tools=TOOLS)
        )
        calls = [(b.name, b.input) for b in msg.content]  # type: ignore[union-attr]
        assert calls == [("get_weather", WEATHER_ARGS), ("get_time", TIME_ARGS)]
        assert len({b.id for b in msg.content}) == 2  # type: ignore[union-attr]
        assert msg.usage.output_tokens == 16  # 8 argument pieces per call

    async def test_streamed_tool_calls(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        found = await events(http, server, body("[[fake:tools=get_weather+get_time]]", tools=TOOLS))
        blocks: dict[int, dict[str, Any]] = {}
        pieces: dict[int, list[str]] = {}
        open_blocks: set[int] = set()
        for e in found:
            if e["type"] == "content_block_start":
                assert e["content_block"]["input"] == {} and not open_blocks
                blocks[e["index"]] = e["content_block"]
                open_blocks.add(e["index"])
            elif e["type"] == "content_block_delta":
                assert e["delta"]["type"] == "input_json_delta" and e["index"] in open_blocks
                pieces.setdefault(e["index"], []).append(e["delta"]["partial_json"])
            elif e["type"] == "content_block_stop":
                open_blocks.remove(e["index"])
        assert not open_blocks
        assert [b["name"] for b in blocks.values()] == ["get_weather", "get_time"]
        assert all(TOOL_ID.match(b["id"]) for b in blocks.values())
        assert all(len(p) >= 2 for p in pieces.values())
        assert orjson.loads("".join(pieces[0])) == WEATHER_ARGS
        assert orjson.loads("".join(pieces[1])) == TIME_ARGS
        assert found[-2]["delta"]["stop_reason"] == "tool_use"

    async def test_choice_none_answers_text(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        msg = await message(
            http, server, body("[[fake:tool=get_time]]", tools=TOOLS, tool_choice={"type": "none"})
        )
        assert msg.content[0].type == "text" and msg.stop_reason == "end_turn"

    @pytest.mark.parametrize(
        "extra",
        [
            {"tools": TOOLS, "messages": [{"role": "user", "content": "[[fake:tool=nope]]"}]},
            {"messages": [{"role": "user", "content": "[[fake:tool=get_time]]"}]},
            {"tools": TOOLS, "tool_choice": {"type": "tool", "name": "nope"}},
        ],
    )
    async def test_tool_not_offered(
        self, extra: dict[str, Any], server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        status, answer, _ = await post(http, server, {**body(), **extra})
        assert status == 400
        assert error_of(answer) == ("error", "invalid_request_error")

    async def test_tool_results(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        data = body("Weather? [[fake:tools=get_weather+get_weather]]", tools=TOOLS)
        data["messages"] += [
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C, cloudy"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "24C, sunny"}],
                    },
                ],
            },
        ]
        msg = await message(http, server, data)
        text = msg.content[0].text  # type: ignore[union-attr]
        assert text == "Tool result received: 18C, cloudy; 24C, sunny"
        assert msg.stop_reason == "end_turn"


class TestRejections:
    @pytest.mark.parametrize(
        ("headers", "status", "kind"),
        [
            ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
            ({"x-api-key": "k"}, 400, "invalid_request_error"),
        ],
    )
    async def test_headers(
        self,
        headers: dict[str, str],
        status: int,
        kind: str,
        server: TestServer,
        http: aiohttp.ClientSession,
    ) -> None:
        got, answer, _ = await post(http, server, body(), headers)
        assert got == status and error_of(answer) == ("error", kind)

    async def test_bearer_key_is_accepted(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        headers = {"Authorization": "Bearer sk-ant-fake", "anthropic-version": "2023-06-01"}
        assert (await post(http, server, body(), headers))[0] == 200

    @pytest.mark.parametrize(
        "data",
        [
            b"{nope",
            b"[]",
            orjson.dumps({k: v for k, v in body().items() if k != "max_tokens"}),
            orjson.dumps({**body(), "max_tokens": 0}),
            orjson.dumps({**body(), "messages": []}),
            orjson.dumps({k: v for k, v in body().items() if k != "model"}),
        ],
    )
    async def test_bad_bodies(
        self, data: bytes, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        status, answer, _ = await post(http, server, data)
        assert status == 400 and error_of(answer) == ("error", "invalid_request_error")

    @pytest.mark.parametrize(
        ("directive", "status", "kind"),
        [
            ("status=400", 400, "invalid_request_error"),
            ("status=401", 401, "authentication_error"),
            ("status=404", 404, "not_found_error"),
            ("status=429", 429, "rate_limit_error"),
            ("status=500", 500, "api_error"),
            ("status=503", 503, "api_error"),
            ("status=529", 529, "overloaded_error"),
            ("status=400,code=billing_error", 400, "billing_error"),
        ],
    )
    async def test_scripted_errors(
        self,
        directive: str,
        status: int,
        kind: str,
        server: TestServer,
        http: aiohttp.ClientSession,
    ) -> None:
        got, answer, resp = await post(http, server, body(f"[[fake:{directive}]]"))
        assert got == status and error_of(answer) == ("error", kind)
        if status == 429:
            assert resp.headers["retry-after"] == "1"
        if status == 404:
            assert "claude-test" in answer["error"]["message"]

    async def test_error_event(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        found = await events(http, server, body("[[fake:error_event_after=1]]"))
        assert [e["type"] for e in found][-2:] == ["content_block_delta", "error"]
        assert error_of({**found[-1], "request_id": "req_x"}) == ("error", "overloaded_error")


class TestOfficialClient:
    @pytest.fixture
    async def client(self, server: TestServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
        client = anthropic.AsyncAnthropic(
            api_key="sk-ant-fake", base_url=str(server.make_url("")), max_retries=0
        )
        yield client
        await client.close()

    async def test_create(self, client: anthropic.AsyncAnthropic) -> None:
        msg = await client.messages.create(
            model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        )
        assert msg.content[0].text == DEFAULT_REPLY  # type: ignore[union-attr]
        assert msg.usage.output_tokens == 8

    async def test_stream_text(self, client: anthropic.AsyncAnthropic) -> None:
        async with client.messages.stream(
            model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text == DEFAULT_REPLY
        assert final.stop_reason == "end_turn" and final.usage.output_tokens == 8
        assert final.usage.input_tokens == 5

    async def test_stream_tool_calls(self, client: anthropic.AsyncAnthropic) -> None:
        async with client.messages.stream(
            model="claude-test",
            max_tokens=100,
            tools=TOOLS,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": "[[fake:tools=get_time+get_weather]]"}],
        ) as stream:
            final = await stream.get_final_message()
        assert [(b.name, b.input) for b in final.content] == [  # type: ignore[union-attr]
            ("get_time", TIME_ARGS),
            ("get_weather", WEATHER_ARGS),
        ]
        assert final.stop_reason == "tool_use"

    async def test_errors_map_to_sdk_exceptions(self, client: anthropic.AsyncAnthropic) -> None:
        expected: list[tuple[str, type[Exception]]] = [
            ("status=400", anthropic.BadRequestError),
            ("status=401", anthropic.AuthenticationError),
            ("status=404", anthropic.NotFoundError),
            ("status=429", anthropic.RateLimitError),
            ("status=500", anthropic.InternalServerError),
            ("status=529", anthropic.OverloadedError),
        ]
        for directive, exc_type in expected:
            with pytest.raises(exc_type):
                await client.messages.create(
                    model="claude-test",
                    max_tokens=100,
                    messages=[{"role": "user", "content": f"[[fake:{directive}]]"}],
                )
        with pytest.raises(anthropic.APIStatusError) as info:
            async with client.messages.stream(
                model="claude-test",
                max_tokens=100,
                messages=[{"role": "user", "content": "[[fake:error_event_after=2]]"}],
            ) as stream:
                async for _ in stream:
                    pass
        assert "overloaded_error" in str(info.value)

    async def test_recorded_call(
        self, client: anthropic.AsyncAnthropic, server: TestServer
    ) -> None:
        await client.messages.create(
            model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        )
        [call] = list(server.app[STATE].calls)
        assert call["wire"] == "anthropic" and call["model"] == "claude-test"
        assert call["headers"]["anthropic-version"]  # the SDK sends its own version
        assert "sk-ant-fake" not in orjson.dumps(call).decode()


async def test_version_is_required_even_without_auth(
    start: Start, http: aiohttp.ClientSession
) -> None:
    server = await start(require_auth=False)
    status, answer, _ = await post(http, server, body(), {})
    assert status == 400 and "anthropic-version" in answer["error"]["message"]
