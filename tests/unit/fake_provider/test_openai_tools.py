"""OpenAI wire: tool calls, tool results and images (text, errors and streams are in
test_fake_provider.py)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from services.fake_provider.app import DEFAULT_REPLY
from tests.oracles import validate_openai
from tests.unit.fake_provider.conftest import (
    PNG_B64,
    TIME_ARGS,
    TIME_TOOL_SCHEMA,
    WEATHER_ARGS,
    WEATHER_TOOL_SCHEMA,
    sse_blocks,
)

AUTH = {"Authorization": "Bearer sk-fake"}
TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL_SCHEMA}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME_TOOL_SCHEMA}},
]
CALL_ID = re.compile(r"^call_[0-9a-f]{24}$")


def chat_body(content: Any = "Hi there you", **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": content},
        ],
        **extra,
    }


async def complete(
    http: aiohttp.ClientSession, server: TestServer, body: dict[str, Any], path: str
) -> tuple[int, Any]:
    async with http.post(server.make_url(path), json=body, headers=AUTH) as resp:
        return resp.status, orjson.loads(await resp.read())


async def completion(
    http: aiohttp.ClientSession,
    server: TestServer,
    body: dict[str, Any],
    path: str = "/v1/chat/completions",
) -> dict[str, Any]:
    status, answer = await complete(http, server, body, path)
    assert status == 200, answer
    ChatCompletion.model_validate(answer)
    validate_openai("CreateChatCompletionResponse", answer)
    result: dict[str, Any] = answer
    return result


async def chunks(
    http: aiohttp.ClientSession,
    server: TestServer,
    body: dict[str, Any],
    path: str = "/v1/chat/completions",
) -> list[dict[str, Any]]:
    async with http.post(
        server.make_url(path), json={**body, "stream": True}, headers=AUTH
    ) as resp:
        assert resp.status == 200
        raw = await resp.read()
    events = sse_blocks(raw)
    assert events[-1] == b"data: [DONE]"
    found = [orjson.loads(e[len(b"data: ") :]) for e in events[:-1]]
    for chunk in found:
        ChatCompletionChunk.model_validate(chunk)
        validate_openai("CreateChatCompletionStreamResponse", chunk)
    return found


def assemble(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls rebuilt from stream fragments the way OpenAI clients do it."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in found:
        for choice in chunk["choices"]:
            for fragment in choice["delta"].get("tool_calls") or []:
                index = fragment["index"]
                if index not in calls:
                    assert fragment["id"] and fragment["type"] == "function"
                    assert fragment["function"]["arguments"] == ""
                    calls[index] = {"id": fragment["id"], "name": fragment["function"]["name"]}
                    calls[index]["pieces"] = []
                else:
                    assert set(fragment) == {"index", "function"}
                    calls[index]["pieces"].append(fragment["function"]["arguments"])
    return [calls[i] for i in sorted(calls)]


class TestToolCalls:
    @pytest.mark.parametrize(
        ("extra", "expected"),
        [
            ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "get_time"),
            ({"tool_choice": "required"}, "get_weather"),
            ({"messages": [{"role": "user", "content": "[[fake:tool=get_time]]"}]}, "get_time"),
        ],
    )
    async def test_single_call(
        self,
        extra: dict[str, Any],
        expected: str,
        server: TestServer,
        http: aiohttp.ClientSession,
    ) -> None:
        answer = await completion(http, server, {**chat_body(tools=TOOLS), **extra})
        [choice] = answer["choices"]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        [call] = choice["message"]["tool_calls"]
        assert CALL_ID.match(call["id"]) and call["type"] == "function"
        assert call["function"]["name"] == expected
        args = {"get_time": TIME_ARGS, "get_weather": WEATHER_ARGS}[expected]
        assert orjson.loads(call["function"]["arguments"]) == args
        assert "index" not in call

    async def test_parallel_calls_in_content_parts(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        content = [
            {"type": "text", "text": "Weather and time"},
            {"type": "text", "text": "[[fake:tools=get_weather+get_time]]"},
        ]
        answer = await completion(http, server, chat_body(content, tools=TOOLS))
        calls = answer["choices"][0]["message"]["tool_calls"]
        assert [
            (c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in calls
        ] == [
            ("get_weather", WEATHER_ARGS),
            ("get_time", TIME_ARGS),
        ]
        assert calls[0]["id"] != calls[1]["id"]
        assert answer["usage"]["completion_tokens"] == 16  # 8 argument pieces per call

    async def test_streamed_calls(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        found = await chunks(
            http, server, chat_body("[[fake:tools=get_weather+get_time]]", tools=TOOLS)
        )
        first = found[0]["choices"][0]["delta"]
        assert first["role"] == "assistant" and first["content"] is None
        assert first["tool_calls"][0]["index"] == 0
        calls = assemble(found)
        assert [c["name"] for c in calls] == ["get_weather", "get_time"]
        assert all(CALL_ID.match(c["id"]) and len(c["pieces"]) >= 2 for c in calls)
        assert orjson.loads("".join(calls[0]["pieces"])) == WEATHER_ARGS
        assert orjson.loads("".join(calls[1]["pieces"])) == TIME_ARGS
        assert found[-1]["choices"][0] == {
            "index": 0,
            "delta": {},
            "logprobs": None,
            "finish_reason": "tool_calls",
        }

    async def test_choice_none_answers_text(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        body = chat_body("[[fake:tool=get_time]]", tools=TOOLS, tool_choice="none")
        answer = await completion(http, server, body)
        assert answer["choices"][0]["message"]["content"] == DEFAULT_REPLY

    @pytest.mark.parametrize(
        "extra",
        [
            {
                "tools": TOOLS,
                "messages": [{"role": "user", "content": "[[fake:tools=get_time+x]]"}],
            },
            {"messages": [{"role": "user", "content": "[[fake:tool=get_time]]"}]},
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
            {"tools": [{"type": "function", "function": {}}]},
            {"tools": "get_time"},
        ],
    )
    async def test_rejected(
        self, extra: dict[str, Any], server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        status, answer = await complete(
            http, server, {**chat_body(), **extra}, "/v1/chat/completions"
        )
        assert status == 400
        validate_openai("ErrorResponse", answer)
        assert answer["error"]["type"] == "invalid_request_error"


class TestToolResultsAndImages:
    async def test_tool_results(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        body = chat_body("Weather? [[fake:tools=get_weather+get_weather]]", tools=TOOLS)
        body["messages"] += [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    },
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": "18C, cloudy"},
            {
                "role": "tool",
                "tool_call_id": "call_b",
                "content": [{"type": "text", "text": "24C"}],
            },
        ]
        answer = await completion(http, server, body)
        assert answer["choices"][0]["message"]["content"] == (
            "Tool result received: 18C, cloudy; 24C"
        )
        assert answer["choices"][0]["finish_reason"] == "stop"

    async def test_images_in_the_last_user_message(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        content = [
            {"type": "text", "text": "Compare"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ]
        body = chat_body(content)
        body["messages"].insert(1, {"role": "user", "content": content[1:]})
        answer = await completion(http, server, body)
        assert answer["choices"][0]["message"]["content"] == "I see 2 image(s). " + DEFAULT_REPLY
        found = await chunks(http, server, chat_body([content[2]]))
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in found)
        assert text == "I see 1 image(s). " + DEFAULT_REPLY


class TestOfficialClient:
    @pytest.fixture
    async def client(self, server: TestServer) -> AsyncIterator[openai.AsyncOpenAI]:
        client = openai.AsyncOpenAI(
            api_key="sk-fake", base_url=str(server.make_url("/v1")), max_retries=0
        )
        yield client
        await client.close()

    async def test_tool_calls(self, client: openai.AsyncOpenAI) -> None:
        answer = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Time?"}],
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
        [call] = answer.choices[0].message.tool_calls or []
        assert call.function.name == "get_time"  # type: ignore[union-attr]
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "[[fake:tools=get_time+get_weather]]"}],
            tools=TOOLS,
            stream=True,
        )
        arguments: dict[int, str] = {}
        names: dict[int, str] = {}
        async for chunk in stream:
            for fragment in chunk.choices[0].delta.tool_calls or []:
                if fragment.function and fragment.function.name:
                    names[fragment.index] = fragment.function.name
                arguments[fragment.index] = arguments.get(fragment.index, "") + (
                    fragment.function.arguments or "" if fragment.function else ""
                )
        assert names == {0: "get_time", 1: "get_weather"}
        assert [orjson.loads(arguments[i]) for i in (0, 1)] == [TIME_ARGS, WEATHER_ARGS]
