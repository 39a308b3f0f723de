from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from services.fake_provider import cli
from services.fake_provider.app import DEFAULT_REPLY
from services.fake_provider.pieces import split_reply
from services.fake_provider.script import ScriptError, Step
from tests.oracles import validate_openai
from tests.unit.fake_provider.conftest import Start

AUTH = {"Authorization": "Bearer sk-fake"}


def chat_body(text: str = "Hi there you", **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": text},
        ],
        **extra,
    }


async def post(
    http: aiohttp.ClientSession, server: TestServer, body: Any, headers: dict[str, str] = AUTH
) -> tuple[int, Any, aiohttp.ClientResponse]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(
        server.make_url("/v1/chat/completions"), data=data, headers=headers
    ) as resp:
        raw = await resp.read()
    return resp.status, orjson.loads(raw), resp


async def stream_events(
    http: aiohttp.ClientSession, server: TestServer, body: dict[str, Any]
) -> list[bytes]:
    async with http.post(
        server.make_url("/v1/chat/completions"), json={**body, "stream": True}, headers=AUTH
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = await resp.read()
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    assert all(e.startswith(b"data: ") for e in events)
    return [e[len(b"data: ") :] for e in events]


class TestChatCompletion:
    async def test_non_streaming_is_valid_openai(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        status, body, resp = await post(http, server, chat_body())
        assert status == 200 and resp.content_type == "application/json"
        ChatCompletion.model_validate(body)
        validate_openai("CreateChatCompletionResponse", body)
        assert body["model"] == "gpt-4o-mini"
        [choice] = body["choices"]
        assert choice["message"]["content"] == DEFAULT_REPLY
        assert choice["finish_reason"] == "stop"
        # "Be nice." = 2 words, "Hi there you" = 3 words, + 4 per message.
        assert body["usage"]["prompt_tokens"] == 2 + 3 + 8
        assert body["usage"]["completion_tokens"] == 8
        assert body["usage"]["total_tokens"] == 21

    async def test_content_parts_count_as_text(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        body = chat_body()
        body["messages"][1]["content"] = [
            {"type": "text", "text": "one two"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]
        _, answer, _ = await post(http, server, body)
        assert answer["usage"]["prompt_tokens"] == 2 + 2 + 8

    async def test_stream_with_usage(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        events = await stream_events(
            http, server, chat_body(stream_options={"include_usage": True})
        )
        assert events[-1] == b"[DONE]"
        chunks = [orjson.loads(e) for e in events[:-1]]
        for c in chunks:
            ChatCompletionChunk.model_validate(c)
            validate_openai("CreateChatCompletionStreamResponse", c)
            assert "usage" in c
        assert len({c["id"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"] == {
            "role": "assistant",
            "content": "",
            "refusal": None,
        }
        content = chunks[1:-2]
        assert len(content) == 8
        assert "".join(c["choices"][0]["delta"]["content"] for c in content) == DEFAULT_REPLY
        assert chunks[-2]["choices"][0] == {
            "index": 0,
            "delta": {},
            "logprobs": None,
            "finish_reason": "stop",
        }
        assert all(c["usage"] is None for c in chunks[:-1])
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["completion_tokens"] == 8
        assert chunks[-1]["usage"]["prompt_tokens"] == 13

    async def test_stream_without_usage(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        events = await stream_events(http, server, chat_body())
        chunks = [orjson.loads(e) for e in events[:-1]]
        assert all("usage" not in c for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        for c in chunks:
            ChatCompletionChunk.model_validate(c)
            validate_openai("CreateChatCompletionStreamResponse", c)

    @pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
    async def test_max_tokens_stops_with_length(
        self, field: str, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        request = {**chat_body(), field: 3}
        _, body, _ = await post(http, server, request)
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["choices"][0]["message"]["content"] == "".join(
            split_reply(DEFAULT_REPLY, 8)[:3]
        )
        assert body["usage"]["completion_tokens"] == 3
        events = await stream_events(http, server, request)
        chunks = [orjson.loads(e) for e in events[:-1]]
        assert len(chunks) == 1 + 3 + 1
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    async def test_config_chunks_and_reply(self, start: Start, http: aiohttp.ClientSession) -> None:
        server = await start(chunks=3, reply="a b c d e f g", require_auth=False)
        events = await stream_events(http, server, chat_body())
        pieces = [orjson.loads(e)["choices"][0]["delta"].get("content") for e in events[1:-2]]
        assert pieces == ["a b c ", "d e ", "f g"]

    async def test_models_list(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        async with http.get(server.make_url("/v1/models")) as resp:
            body = await resp.json()
        validate_openai("ListModelsResponse", body)
        for model in body["data"]:
            validate_openai("Model", model)


class TestRejections:
    async def test_missing_auth(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
            status, body, _ = await post(http, server, chat_body(), headers)
            assert status == 401
            validate_openai("ErrorResponse", body)

    async def test_auth_can_be_off(self, start: Start, http: aiohttp.ClientSession) -> None:
        server = await start(require_auth=False)
        status, _, _ = await post(http, server, chat_body(), {})
        assert status == 200

    @pytest.mark.parametrize(
        "body",
        [
            b"{nope",
            b"[]",
            orjson.dumps({"messages": [{"role": "user", "content": "x"}]}),
            orjson.dumps({"model": "m"}),
            orjson.dumps({"model": "m", "messages": []}),
            orjson.dumps(
                {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}
            ),
            orjson.dumps(
                {"model": "m", "messages": [{"role": "user", "content": "[[fake:bogus=1]]"}]}
            ),
        ],
    )
    async def test_bad_requests(
        self, body: bytes, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        status, answer, _ = await post(http, server, body)
        assert status == 400
        validate_openai("ErrorResponse", answer)
        assert answer["error"]["type"] == "invalid_request_error"


class TestDirectives:
    @pytest.mark.parametrize(
        ("directive", "status", "type_", "code"),
        [
            ("status=500", 500, "server_error", None),
            ("status=503", 503, "server_error", "server_is_overloaded"),
            ("status=400", 400, "invalid_request_error", "invalid_value"),
            ("status=404", 404, "invalid_request_error", "model_not_found"),
            ("status=429", 429, "requests", "rate_limit_exceeded"),
            ("status=429,code=insufficient_quota", 429, "insufficient_quota", "insufficient_quota"),
            ("status=529", 529, "server_error", "overloaded"),
        ],
    )
    async def test_status(
        self,
        directive: str,
        status: int,
        type_: str,
        code: str | None,
        server: TestServer,
        http: aiohttp.ClientSession,
    ) -> None:
        got, body, _ = await post(http, server, chat_body(f"Hi [[fake:{directive}]]"))
        assert got == status
        validate_openai("ErrorResponse", body)
        assert (body["error"]["type"], body["error"]["code"]) == (type_, code)

    async def test_retry_after(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        _, _, resp = await post(http, server, chat_body("[[fake:status=429]]"))
        assert resp.headers["retry-after"] == "1"
        _, _, resp = await post(http, server, chat_body("[[fake: status=503, retry_after=2.5 ]]"))
        assert resp.headers["retry-after"] == "2.5"

    async def test_only_the_last_user_message_counts(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        body = chat_body("fine")
        body["messages"].insert(1, {"role": "user", "content": "[[fake:status=500]]"})
        status, _, _ = await post(http, server, body)
        assert status == 200

    async def test_chunks_delay_and_ttft(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        started = time.monotonic()
        events = await stream_events(
            http, server, chat_body("[[fake:chunks=20,chunk_delay_ms=5,ttft_ms=50]]")
        )
        elapsed = time.monotonic() - started
        pieces = [orjson.loads(e)["choices"][0]["delta"]["content"] for e in events[1:-2]]
        assert len(pieces) == 20 and "".join(pieces) == DEFAULT_REPLY
        assert 0.9 * (0.05 + 19 * 0.005) <= elapsed < 2.0

    async def test_drop_after(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        received = b""
        async with http.post(
            server.make_url("/v1/chat/completions"),
            json=chat_body("[[fake:drop_after=3]]", stream=True),
            headers=AUTH,
        ) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                async for part in resp.content.iter_any():
                    received += part
        events = received.strip().split(b"\n\n")
        assert len(events) == 4 and b"[DONE]" not in received  # role + 3 content chunks

    async def test_error_event(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        events = await stream_events(http, server, chat_body("[[fake:error_event_after=2]]"))
        assert len(events) == 4 and b"[DONE]" not in events
        error = orjson.loads(events[-1])
        validate_openai("ErrorResponse", error)

    async def test_hang_until_the_client_leaves(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(post(http, server, chat_body("[[fake:hang]]")), 0.2)
        # The server is still healthy and answers the next request at once.
        status, _, _ = await post(http, server, chat_body())
        assert status == 200


class TestControlApi:
    async def test_script_queue(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        steps = [
            {"status": 500},
            {"model": "other", "status": 404},
            {"status": 429, "retry_after": 0},
        ]
        async with http.post(server.make_url("/_fake/script"), json=steps) as resp:
            assert resp.status == 200 and (await resp.json())["queued"] == 3
        statuses = [(await post(http, server, chat_body()))[0] for _ in range(3)]
        assert statuses == [500, 429, 200]  # the `other` step waits for its model
        async with http.get(server.make_url("/_fake/script")) as resp:
            assert await resp.json() == [{"model": "other", "status": 404}]
        status, _, _ = await post(http, server, {**chat_body(), "model": "other"})
        assert status == 404
        async with http.post(server.make_url("/_fake/script"), json=[{"status": 500}]):
            pass
        async with http.delete(server.make_url("/_fake/script")) as resp:
            assert (await resp.json())["cleared"] == 1
        assert (await post(http, server, chat_body()))[0] == 200

    async def test_directive_overrides_step(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        async with http.post(server.make_url("/_fake/script"), json={"status": 500}):
            pass
        assert (await post(http, server, chat_body("[[fake:status=200]]")))[0] == 200

    async def test_bad_script(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        for bad in (b"{", b'[{"nope": 1}]', b'[{"status": "x"}]', b"3"):
            async with http.post(server.make_url("/_fake/script"), data=bad) as resp:
                assert resp.status == 400

    async def test_calls_are_recorded_without_the_key(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        await post(http, server, chat_body(), {**AUTH, "X-Trace": "t1"})
        async with http.get(server.make_url("/_fake/calls")) as resp:
            [call] = await resp.json()
        assert call["path"] == "/v1/chat/completions"
        assert call["body"] == chat_body()
        assert call["headers"]["X-Trace"] == "t1"
        assert not any(k.lower() == "authorization" for k in call["headers"])
        assert "sk-fake" not in orjson.dumps(call).decode()
        async with http.delete(server.make_url("/_fake/calls")) as resp:
            assert (await resp.json())["cleared"] == 1
        async with http.get(server.make_url("/_fake/calls")) as resp:
            assert await resp.json() == []


class TestOfficialClient:
    @pytest.fixture
    async def client(self, server: TestServer) -> AsyncIterator[openai.AsyncOpenAI]:
        client = openai.AsyncOpenAI(
            api_key="sk-fake", base_url=str(server.make_url("/v1")), max_retries=0
        )
        yield client
        await client.close()

    async def test_non_streaming(self, client: openai.AsyncOpenAI) -> None:
        answer = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}]
        )
        assert answer.choices[0].message.content == DEFAULT_REPLY
        assert answer.usage is not None and answer.usage.completion_tokens == 8

    async def test_streaming(self, client: openai.AsyncOpenAI) -> None:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text = ""
        usage = None
        async for chunk in stream:
            for c in chunk.choices:
                text += c.delta.content or ""
            usage = chunk.usage or usage
        assert text == DEFAULT_REPLY
        assert usage is not None and usage.total_tokens == 5 + 8

    async def test_errors_map_to_sdk_exceptions(self, client: openai.AsyncOpenAI) -> None:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "[[fake:status=429]]"}]
            )
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "[[fake:status=500]]"}]
            )
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "[[fake:error_event_after=1]]"}],
            stream=True,
        )
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass

    async def test_missing_key_is_authentication_error(self, server: TestServer) -> None:
        client = openai.AsyncOpenAI(
            api_key="unused",
            base_url=str(server.make_url("/v1")),
            max_retries=0,
            default_headers={"Authorization": "Basic abc"},
        )
        try:
            with pytest.raises(openai.AuthenticationError):
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}]
                )
        finally:
            await client.close()


class TestPieces:
    @pytest.mark.parametrize("count", [1, 2, 3, 8, 17, 18, 40, 500])
    def test_split_rejoins(self, count: int) -> None:
        pieces = split_reply(DEFAULT_REPLY, count)
        assert "".join(pieces) == DEFAULT_REPLY
        assert len(pieces) == min(count, len(DEFAULT_REPLY))
        assert all(pieces)

    def test_split_at_words_when_possible(self) -> None:
        assert split_reply("  a b  c", 3) == ("  a ", "b  ", "c")
        assert split_reply("", 4) == ()

    def test_directive_parsing(self) -> None:
        step = Step.from_directives("x [[fake:status=429,retry_after=1]] y [[fake:hang]]")
        assert step == Step(status=429, retry_after=1.0, hang=True)
        assert Step.from_directives("no directives here") is None
        with pytest.raises(ScriptError):
            Step.from_directives("[[fake:drop_after=-1]]")


def test_cli_arguments() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.ttft_ms, args.chunks, args.chunk_delay_ms, args.no_auth) == (
        "127.0.0.1",
        8090,
        0,
        8,
        0,
        False,
    )
    args = parser.parse_args(["--port", "0", "--no-auth", "--chunks", "3"])
    assert (args.port, args.no_auth, args.chunks) == (0, True, 3)
