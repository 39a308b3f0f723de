"""Together wire: OpenAI's format with Together's documented differences (doc §4)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema  # type: ignore[import-untyped, unused-ignore]
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from services.fake_provider.app import DEFAULT_REPLY
from tests.oracles import validate_openai
from tests.unit.fake_provider.conftest import TIME_ARGS, TIME_TOOL_SCHEMA, sse_blocks

PATH = "/together/v1/chat/completions"
AUTH = {"Authorization": "Bearer tg-fake"}
TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": TIME_TOOL_SCHEMA}}]
RATE_HEADERS = (
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-tokenlimit-limit",
    "x-tokenlimit-remaining",
)


def chat_body(text: str = "Hi there you", **extra: Any) -> dict[str, Any]:
    return {
        "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def as_openai(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` with Together's `eos` read as `stop`, the only value OpenAI's schema lacks."""
    raw = orjson.dumps(obj).replace(b'"finish_reason":"eos"', b'"finish_reason":"stop"')
    result: dict[str, Any] = orjson.loads(raw)
    return result


async def post(
    http: aiohttp.ClientSession, server: TestServer, body: dict[str, Any]
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.post(server.make_url(PATH), json=body, headers=AUTH) as resp:
        answer = await resp.read()
    return resp.status, answer, resp


async def completion(
    http: aiohttp.ClientSession, server: TestServer, body: dict[str, Any]
) -> tuple[dict[str, Any], aiohttp.ClientResponse]:
    status, raw, resp = await post(http, server, body)
    assert status == 200, raw
    answer: dict[str, Any] = orjson.loads(raw)
    ChatCompletion.model_validate(as_openai(answer))
    validate_openai("CreateChatCompletionResponse", as_openai(answer))
    return answer, resp


async def chunks(
    http: aiohttp.ClientSession, server: TestServer, body: dict[str, Any]
) -> list[dict[str, Any]]:
    status, raw, resp = await post(http, server, {**body, "stream": True})
    assert status == 200 and all(h in resp.headers for h in RATE_HEADERS)
    events = sse_blocks(raw)
    assert events[-1] == b"data: [DONE]"
    found = [orjson.loads(e[len(b"data: ") :]) for e in events[:-1]]
    for chunk in found:
        ChatCompletionChunk.model_validate(as_openai(chunk))
        validate_openai("CreateChatCompletionStreamResponse", as_openai(chunk))
    return found


class TestAnswers:
    async def test_completion(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        answer, resp = await completion(http, server, chat_body())
        assert answer["choices"][0]["message"]["content"] == DEFAULT_REPLY
        assert answer["choices"][0]["finish_reason"] == "stop"
        assert answer["usage"]["completion_tokens"] == 8
        assert {h: resp.headers[h] for h in RATE_HEADERS} == {
            "x-ratelimit-limit": "600",
            "x-ratelimit-remaining": "599",
            "x-ratelimit-reset": "1",
            "x-tokenlimit-limit": "180000",
            "x-tokenlimit-remaining": "179999",
        }

    async def test_eos(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        answer, _ = await completion(http, server, chat_body("Hi [[fake:eos]]"))
        assert answer["choices"][0]["finish_reason"] == "eos"
        with pytest.raises(jsonschema.ValidationError):  # what the gateway must normalise
            validate_openai("CreateChatCompletionResponse", answer)
        found = await chunks(http, server, chat_body("[[fake:eos]]"))
        assert found[-1]["choices"][0]["finish_reason"] == "eos"
        capped, _ = await completion(http, server, chat_body("[[fake:eos]]", max_tokens=2))
        assert capped["choices"][0]["finish_reason"] == "length"

    @pytest.mark.parametrize("include_usage", [False, True])
    async def test_usage_rides_on_the_finish_chunk(
        self, include_usage: bool, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
        found = await chunks(http, server, chat_body(**extra))
        assert all(c["choices"] for c in found)  # no OpenAI-style `choices: []` usage chunk
        assert all(c["usage"] is None for c in found[:-1])
        assert found[-1]["choices"][0]["finish_reason"] == "stop"
        assert found[-1]["usage"]["completion_tokens"] == 8
        assert found[-1]["usage"]["prompt_tokens"] == 3 + 4
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in found)
        assert text == DEFAULT_REPLY

    async def test_tool_calls_are_indexed(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        answer, _ = await completion(http, server, chat_body("[[fake:tool=get_time]]", tools=TOOLS))
        [call] = answer["choices"][0]["message"]["tool_calls"]
        assert call["index"] == 0 and orjson.loads(call["function"]["arguments"]) == TIME_ARGS
        assert answer["choices"][0]["finish_reason"] == "tool_calls"
        found = await chunks(http, server, chat_body("[[fake:tool=get_time]]", tools=TOOLS))
        assert found[-1]["choices"][0]["finish_reason"] == "tool_calls"
        assert found[-1]["usage"]["completion_tokens"] == 8


class TestErrors:
    @pytest.mark.parametrize(
        ("directive", "status", "type_", "code"),
        [
            ("status=400", 400, "invalid_request_error", None),
            ("status=401", 401, "invalid_request_error", "invalid_api_key"),
            ("status=404", 404, "invalid_request_error", "model_not_found"),
            ("status=429", 429, "dynamic_request_limited", None),
            (
                "status=429,code=dynamic_token_limited",
                429,
                "dynamic_token_limited",
                "dynamic_token_limited",
            ),
            ("status=500", 500, "server_error", None),
            ("status=503", 503, "server_error", None),
            ("status=529", 529, "server_error", None),
        ],
    )
    async def test_error_shape(
        self,
        directive: str,
        status: int,
        type_: str,
        code: str | None,
        server: TestServer,
        http: aiohttp.ClientSession,
    ) -> None:
        got, raw, resp = await post(http, server, chat_body(f"[[fake:{directive}]]"))
        body = orjson.loads(raw)
        validate_openai("ErrorResponse", body)
        assert got == status
        assert body["error"]["type"] == type_
        assert body["error"]["code"] == code
        assert all(h in resp.headers for h in RATE_HEADERS)

    async def test_rate_limit_headers(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        _, _, resp = await post(http, server, chat_body("[[fake:status=429,retry_after=7]]"))
        assert resp.headers["x-ratelimit-remaining"] == "0"
        assert resp.headers["x-ratelimit-reset"] == "7" == resp.headers["retry-after"]
        _, _, resp = await post(http, server, chat_body("[[fake:status=429]]"))
        assert resp.headers["x-ratelimit-reset"] == "1"


class TestOfficialClient:
    @pytest.fixture
    async def client(self, server: TestServer) -> AsyncIterator[openai.AsyncOpenAI]:
        client = openai.AsyncOpenAI(
            api_key="tg-fake", base_url=str(server.make_url("/together/v1")), max_retries=0
        )
        yield client
        await client.close()

    async def test_stream_and_errors(self, client: openai.AsyncOpenAI) -> None:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Hi [[fake:eos]]"}], stream=True
        )
        text, finish, usage = "", None, None
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
        assert (text, finish) == (DEFAULT_REPLY, "eos")
        assert usage is not None and usage.completion_tokens == 8
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "[[fake:status=429]]"}]
            )
