"""The Gemini wire, checked with google-genai's types (extra="forbid", warnings as errors)
and its client."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from google import genai
from google.genai import errors, types

from services.fake_provider.app import DEFAULT_REPLY
from services.fake_provider.pieces import split_reply
from tests.unit.fake_provider.conftest import (
    PNG_B64,
    TIME_ARGS,
    TIME_TOOL_SCHEMA,
    WEATHER_ARGS,
    WEATHER_TOOL_SCHEMA,
    sse_blocks,
)

HEADERS = {"x-goog-api-key": "AIza-fake"}
GENERATE = "/v1beta/models/gemini-test:generateContent"
STREAM = "/v1beta/models/gemini-test:streamGenerateContent?alt=sse"
TOOLS = [
    {
        "functionDeclarations": [
            {"name": "get_weather", "description": "Weather", "parameters": WEATHER_TOOL_SCHEMA},
            {"name": "get_time", "description": "Time", "parametersJsonSchema": TIME_TOOL_SCHEMA},
        ]
    }
]


def body(*parts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "systemInstruction": {"parts": [{"text": "Be nice."}]},
        "contents": [{"role": "user", "parts": list(parts) or [{"text": "Hi there you"}]}],
        **extra,
    }


def text(value: str) -> dict[str, Any]:
    return {"text": value}


def validate(raw: bytes) -> types.GenerateContentResponse:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unknown enum values only warn otherwise
        return types.GenerateContentResponse.model_validate_json(raw)


async def post(
    http: aiohttp.ClientSession,
    server: TestServer,
    data: Any,
    path: str = GENERATE,
    headers: dict[str, str] = HEADERS,
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    async with http.post(server.make_url(path), data=raw, headers=headers) as resp:
        answer = await resp.read()
    return resp.status, answer, resp


async def generate(
    http: aiohttp.ClientSession, server: TestServer, data: Any
) -> types.GenerateContentResponse:
    status, raw, resp = await post(http, server, data)
    assert status == 200, raw
    assert resp.content_type == "application/json"
    return validate(raw)


async def chunks(
    http: aiohttp.ClientSession, server: TestServer, data: Any
) -> list[types.GenerateContentResponse]:
    status, raw, resp = await post(http, server, data, STREAM)
    assert status == 200 and resp.content_type == "text/event-stream"
    assert b"[DONE]" not in raw
    blocks = sse_blocks(raw, b"\r\n\r\n")
    assert all(b.startswith(b"data: ") and b"\n" not in b for b in blocks)
    return [validate(b[len(b"data: ") :]) for b in blocks]


def error_of(raw: bytes) -> dict[str, Any]:
    error: dict[str, Any] = orjson.loads(raw)["error"]
    assert isinstance(error["code"], int) and error["message"] and error["status"]
    return error


class TestText:
    async def test_generate(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        answer = await generate(http, server, body())
        [candidate] = answer.candidates or []
        assert candidate.content and candidate.content.role == "model"
        assert answer.text == DEFAULT_REPLY
        assert candidate.finish_reason == types.FinishReason.STOP
        usage = answer.usage_metadata
        assert usage is not None
        # "Be nice." (system) + "Hi there you": 2 + 3 words, + 4 per content.
        assert (usage.prompt_token_count, usage.candidates_token_count) == (13, 8)
        assert usage.total_token_count == 21
        assert answer.model_version == "gemini-test" and answer.response_id

    async def test_stream(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        found = await chunks(http, server, body())
        assert len(found) == 8
        assert "".join(c.text or "" for c in found) == DEFAULT_REPLY
        reasons = [c.candidates[0].finish_reason for c in found]  # type: ignore[index]
        assert reasons == [None] * 7 + [types.FinishReason.STOP]
        counts = [c.usage_metadata.candidates_token_count for c in found]  # type: ignore[union-attr]
        assert counts == list(range(1, 9))
        assert {c.usage_metadata.prompt_token_count for c in found} == {13}  # type: ignore[union-attr]
        assert len({c.response_id for c in found}) == 1

    async def test_max_output_tokens(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        data = body(generationConfig={"maxOutputTokens": 3})
        answer = await generate(http, server, data)
        assert answer.text == "".join(split_reply(DEFAULT_REPLY, 8)[:3])
        assert answer.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS  # type: ignore[index]
        assert answer.usage_metadata.candidates_token_count == 3  # type: ignore[union-attr]
        found = await chunks(http, server, data)
        assert len(found) == 3
        assert found[-1].candidates[0].finish_reason == types.FinishReason.MAX_TOKENS  # type: ignore[index]

    async def test_images_in_the_last_user_content(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        data = body(
            text("What are these?"),
            {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
            {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}},
        )
        data["contents"][:0] = [
            {"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": PNG_B64}}]},
            {"role": "model", "parts": [text("A pixel.")]},
        ]
        answer = await generate(http, server, data)
        assert answer.text == "I see 2 image(s). " + DEFAULT_REPLY

    async def test_key_in_query(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        status, _, _ = await post(http, server, body(), f"{GENERATE}?key=AIza-fake", {})
        assert status == 200


class TestTools:
    @pytest.mark.parametrize(
        ("config", "expected"),
        [
            ({"mode": "ANY", "allowedFunctionNames": ["get_time"]}, "get_time"),
            ({"mode": "ANY"}, "get_weather"),
        ],
    )
    async def test_forced(
        self,
        config: dict[str, Any],
        expected: str,
        server: TestServer,
        http: aiohttp.ClientSession,
    ) -> None:
        data = body(tools=TOOLS, toolConfig={"functionCallingConfig": config})
        answer = await generate(http, server, data)
        [call] = answer.function_calls or []
        assert call.name == expected and call.id is None
        assert call.args == {"get_time": TIME_ARGS, "get_weather": WEATHER_ARGS}[expected]
        assert answer.candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]

    async def test_directive_parallel(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        data = body(text("Go [[fake:tools=get_weather+get_time]]"), tools=TOOLS)
        answer = await generate(http, server, data)
        calls = [(c.name, c.args, c.id) for c in answer.function_calls or []]
        assert calls == [("get_weather", WEATHER_ARGS, None), ("get_time", TIME_ARGS, None)]

    async def test_streamed_calls_come_whole(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        data = body(text("[[fake:tools=get_time+get_weather]]"), tools=TOOLS)
        found = await chunks(http, server, data)
        assert len(found) == 2
        calls = [c.function_calls for c in found]
        assert [[(f.name, f.args) for f in fc or []] for fc in calls] == [
            [("get_time", TIME_ARGS)],
            [("get_weather", WEATHER_ARGS)],
        ]
        assert found[0].candidates[0].finish_reason is None  # type: ignore[index]
        assert found[1].candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]

    async def test_mode_none_answers_text(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        data = body(
            text("[[fake:tool=get_time]]"),
            tools=TOOLS,
            toolConfig={"functionCallingConfig": {"mode": "NONE"}},
        )
        assert (await generate(http, server, data)).text == DEFAULT_REPLY

    async def test_not_offered(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        status, raw, _ = await post(http, server, body(text("[[fake:tool=nope]]"), tools=TOOLS))
        assert status == 400 and error_of(raw)["status"] == "INVALID_ARGUMENT"

    async def test_function_responses(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        data = body(text("Weather? [[fake:tools=get_weather+get_weather]]"), tools=TOOLS)
        data["contents"] += [
            {
                "role": "model",
                "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"content": "18C"}}},
                    {"functionResponse": {"name": "get_weather", "response": {"temp": 24}}},
                ],
            },
        ]
        answer = await generate(http, server, data)
        assert answer.text == 'Tool result received: {"content":"18C"}; {"temp":24}'
        assert answer.function_calls is None


class TestErrors:
    @pytest.mark.parametrize(
        ("directive", "code", "status"),
        [
            ("status=400", 400, "INVALID_ARGUMENT"),
            ("status=401", 401, "UNAUTHENTICATED"),
            ("status=404", 404, "NOT_FOUND"),
            ("status=500", 500, "INTERNAL"),
            ("status=503", 503, "UNAVAILABLE"),
            ("status=529", 529, "INTERNAL"),
        ],
    )
    async def test_status(
        self,
        directive: str,
        code: int,
        status: str,
        server: TestServer,
        http: aiohttp.ClientSession,
    ) -> None:
        got, raw, _ = await post(http, server, body(text(f"[[fake:{directive}]]")))
        error = error_of(raw)
        assert got == code and (error["code"], error["status"]) == (code, status)
        if code == 401:
            assert error["details"][0]["reason"] == "API_KEY_INVALID"
        if code == 404:
            assert "models/gemini-test" in error["message"]

    async def test_api_key_invalid_as_google_sends_it(
        self, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        got, raw, _ = await post(
            http, server, body(text("[[fake:status=400,code=API_KEY_INVALID]]"))
        )
        error = error_of(raw)
        assert got == 400 and error["status"] == "INVALID_ARGUMENT"
        assert error["details"] == [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ]

    @pytest.mark.parametrize(
        ("directive", "delay", "header", "quota"),
        [
            ("status=429", "1s", None, "PerMinute"),
            ("status=429,retry_after=2", "2s", "2", "PerMinute"),
            ("status=429,retry_after=0.5,code=insufficient_quota", "0.5s", "0.5", "PerDay"),
        ],
    )
    async def test_resource_exhausted(
        self,
        directive: str,
        delay: str,
        header: str | None,
        quota: str,
        server: TestServer,
        http: aiohttp.ClientSession,
    ) -> None:
        got, raw, resp = await post(http, server, body(text(f"[[fake:{directive}]]")))
        error = error_of(raw)
        assert got == 429 and error["status"] == "RESOURCE_EXHAUSTED"
        details = {d["@type"].rsplit(".", 1)[1]: d for d in error["details"]}
        assert details["RetryInfo"]["retryDelay"] == delay
        assert quota in details["QuotaFailure"]["violations"][0]["quotaId"]
        assert resp.headers.get("retry-after") == header

    @pytest.mark.parametrize(
        ("path", "headers", "code"),
        [
            (GENERATE, {}, 401),
            ("/v1beta/models/gemini-test:streamGenerateContent", HEADERS, 400),
            ("/v1beta/models/gemini-test:countTokens", HEADERS, 404),
        ],
    )
    async def test_rejections(
        self,
        path: str,
        headers: dict[str, str],
        code: int,
        server: TestServer,
        http: aiohttp.ClientSession,
    ) -> None:
        got, raw, _ = await post(http, server, body(), path, headers)
        assert got == code and error_of(raw)["code"] == code

    @pytest.mark.parametrize(
        "data",
        [
            b"{nope",
            b"[]",
            orjson.dumps({"contents": []}),
            orjson.dumps(body(generationConfig={"maxOutputTokens": 0})),
        ],
    )
    async def test_bad_bodies(
        self, data: bytes, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        got, raw, _ = await post(http, server, data)
        assert got == 400 and error_of(raw)["status"] == "INVALID_ARGUMENT"

    async def test_error_event(self, server: TestServer, http: aiohttp.ClientSession) -> None:
        status, raw, _ = await post(
            http, server, body(text("[[fake:error_event_after=2]]")), STREAM
        )
        blocks = sse_blocks(raw, b"\r\n\r\n")
        assert status == 200 and len(blocks) == 3
        for block in blocks[:2]:
            validate(block[len(b"data: ") :])
        assert error_of(blocks[2][len(b"data: ") :]) == {
            "code": 503,
            "message": "The model is overloaded. Please try again later.",
            "status": "UNAVAILABLE",
        }


# google-genai subclasses aiohttp.ClientSession for its async transport, which aiohttp warns
# about; the warning is the SDK's business, not the fake's.
@pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
class TestOfficialClient:
    @pytest.fixture
    async def client(self, server: TestServer) -> AsyncIterator[genai.Client]:
        client = genai.Client(
            api_key="AIza-fake",
            http_options=types.HttpOptions(
                base_url=str(server.make_url("")),
                api_version="v1beta",
                retry_options=types.HttpRetryOptions(attempts=1),
            ),
        )
        yield client
        await client.aio.aclose()

    async def test_generate(self, client: genai.Client) -> None:
        answer = await client.aio.models.generate_content(
            model="gemini-test",
            contents="Hello",
            config=types.GenerateContentConfig(system_instruction="Be nice."),
        )
        assert answer.text == DEFAULT_REPLY
        assert answer.usage_metadata and answer.usage_metadata.prompt_token_count == 5 + 6

    async def test_stream(self, client: genai.Client) -> None:
        pieces = [
            chunk.text or ""
            async for chunk in await client.aio.models.generate_content_stream(
                model="gemini-test", contents="Hello"
            )
        ]
        assert len(pieces) == 8 and "".join(pieces) == DEFAULT_REPLY

    async def test_tool_calls(self, client: genai.Client) -> None:
        config = types.GenerateContentConfig(
            tools=[types.Tool.model_validate(TOOLS[0])],
            tool_config=types.ToolConfig(
                function_calling_config=types.FunctionCallingConfig(
                    mode=types.FunctionCallingConfigMode.ANY, allowed_function_names=["get_time"]
                )
            ),
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )
        answer = await client.aio.models.generate_content(
            model="gemini-test", contents="What time is it?", config=config
        )
        assert [(c.name, c.args) for c in answer.function_calls or []] == [("get_time", TIME_ARGS)]
        streamed = [
            call
            async for chunk in await client.aio.models.generate_content_stream(
                model="gemini-test",
                contents="[[fake:tools=get_weather+get_time]]",
                config=config,
            )
            for call in chunk.function_calls or []
        ]
        assert [c.name for c in streamed] == ["get_weather", "get_time"]

    async def test_errors(self, client: genai.Client) -> None:
        with pytest.raises(errors.ClientError) as info:
            await client.aio.models.generate_content(
                model="gemini-test", contents="[[fake:status=429,retry_after=3]]"
            )
        assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
        with pytest.raises(errors.ServerError):
            await client.aio.models.generate_content(
                model="gemini-test", contents="[[fake:status=503]]"
            )
        with pytest.raises(errors.ServerError) as server_info:
            async for _ in await client.aio.models.generate_content_stream(
                model="gemini-test", contents="[[fake:error_event_after=1]]"
            ):
                pass
        assert server_info.value.code == 503
