"""Gemini end to end: the OpenAI SDK -> gateway -> worker's Gemini adapter -> the fake
provider speaking Gemini's wire (`/v1beta/models/{model}:generateContent`).

Every request body the fake received is checked with google-genai's wire models.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator
from typing import Any, Self

import openai
import orjson
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionFunctionToolParam

from services.fake_provider.state import DEFAULT_REPLY
from services.runner import free_port
from tests.e2e.conftest import Stack, http, running_stack
from tests.oracles import validate_openai
from tests.oracles_gemini import validate_gemini_request

MODEL = "gemini-1.5-pro"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PNG_B64 = base64.b64encode(PNG).decode()
WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
CLOCK: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"utc": {"type": "boolean"}},
            "required": ["utc"],
        },
    },
}


class ImageHost:
    """A small aiohttp server on its own thread and loop, serving one PNG."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hosts: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def url(self, path: str) -> str:
        return f"http://localhost:{self.port}{path}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def image(request: web.Request) -> web.Response:
            self.hosts.append(request.headers.get("Host", ""))
            return web.Response(body=PNG, content_type="image/png")

        app = web.Application()
        app.router.add_get("/cat.png", image)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(10), "image host did not start"
        return self

    def __exit__(self, *_: object) -> None:
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def gemini(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, openai.OpenAI]]:
    overrides = {
        "API_KEY_GOOGLE": "test-key",
        "BASE_URL_GOOGLE": "{fake}/v1beta",
        "MEDIA_ALLOW_PRIVATE_NETWORKS": "true",
        "PROVIDER_MAX_RETRIES": "0",
    }
    with running_stack(tmp_path_factory, demo=False, env_overrides=overrides) as stack:
        _user, key = stack.new_funded_user("10")
        client = openai.OpenAI(
            api_key=key, base_url=stack.api_url + "/v1", max_retries=0, timeout=30
        )
        yield stack, client
        # Whatever the tests sent, Gemini would have accepted its shape.
        for call in fake_calls(stack):
            validate_gemini_request(call["body"])


@pytest.fixture(scope="module")
def image_host() -> Iterator[ImageHost]:
    with ImageHost() as host:
        yield host


def fake_calls(stack: Stack) -> list[dict[str, Any]]:
    _status, calls = http("GET", stack.fake_url + "/_fake/calls")
    return [c for c in calls if c.get("wire") == "gemini"]


def last_body(stack: Stack) -> dict[str, Any]:
    call = fake_calls(stack)[-1]
    validate_gemini_request(call["body"])
    return dict(call["body"])


def stream_all(stream: Any) -> tuple[list[Any], str, dict[int, dict[str, Any]], str | None, Any]:
    """(chunks, text, tool calls by index, finish reason, usage) of an SDK stream."""
    chunks: list[Any] = []
    text, finish, usage = "", None, None
    calls: dict[int, dict[str, Any]] = {}
    for chunk in stream:
        validate_openai("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        chunks.append(chunk)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or ():
                entry = calls.setdefault(call.index, {"id": call.id, "name": None, "arguments": ""})
                if call.function is not None:
                    entry["name"] = entry["name"] or call.function.name
                    entry["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    return chunks, text, calls, finish, usage


class TestText:
    def test_non_streaming(self, gemini: tuple[Stack, openai.OpenAI]) -> None:
        stack, client = gemini
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello there [[fake:chunks=3]]"},
            ],
            temperature=0.3,
            max_completion_tokens=50,
            stop=["END"],
        )
        validate_openai("CreateChatCompletionResponse", orjson.loads(raw.content))
        completion = raw.parse()
        choice = completion.choices[0]
        assert choice.message.content == DEFAULT_REPLY
        assert choice.finish_reason == "stop"
        assert completion.usage is not None and completion.usage.completion_tokens == 3
        assert completion.usage.prompt_tokens > 0
        call = fake_calls(stack)[-1]
        assert call["path"] == f"/v1beta/models/{MODEL}:generateContent"
        assert call["has_auth"] and "query" not in call  # the key went in a header
        body = last_body(stack)
        assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert body["generationConfig"] == {
            "temperature": 0.3,
            "maxOutputTokens": 50,
            "stopSequences": ["END"],
        }

    def test_streaming_with_usage(self, gemini: tuple[Stack, openai.OpenAI]) -> None:
        stack, client = gemini
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Stream it [[fake:chunks=4]]"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks, text, _calls, finish, usage = stream_all(stream)
        assert text == DEFAULT_REPLY
        assert finish == "stop"
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].choices == [] and usage is not None and usage.completion_tokens == 4
        call = fake_calls(stack)[-1]
        assert call["path"] == f"/v1beta/models/{MODEL}:streamGenerateContent"
        assert call["query"] == {"alt": "sse"}

    def test_max_tokens_ends_with_length(self, gemini: tuple[Stack, openai.OpenAI]) -> None:
        _stack, client = gemini
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Long please [[fake:chunks=5]]"}],
            max_tokens=2,
        )
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage is not None and completion.usage.completion_tokens == 2


class TestTools:
    def test_tool_call_then_result_with_stable_ids(
        self, gemini: tuple[Stack, openai.OpenAI]
    ) -> None:
        stack, client = gemini
        messages: list[Any] = [
            {"role": "user", "content": "Weather in Paris? [[fake:tool=get_weather]]"}
        ]
        first = client.chat.completions.create(
            model=MODEL, messages=messages, tools=[WEATHER, CLOCK]
        )
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls or []
        assert call.id.startswith("call_")
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert orjson.loads(call.function.arguments) == {"city": "Paris", "days": 1}  # type: ignore[union-attr]
        sent = last_body(stack)
        assert sent["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"

        messages += [
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'},
        ]
        second = client.chat.completions.create(
            model=MODEL, messages=messages, tools=[WEATHER, CLOCK]
        )
        assert second.choices[0].message.content == 'Tool result received: {"temp_c":18}'
        assert second.choices[0].finish_reason == "stop"
        turns = last_body(stack)["contents"]
        assert turns[1] == {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "days": 1}}}
            ],
        }
        assert turns[2] == {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}}],
        }

    def test_streamed_parallel_tool_calls(self, gemini: tuple[Stack, openai.OpenAI]) -> None:
        stack, client = gemini
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "user", "content": "Both please [[fake:tools=get_weather+get_time]]"}
            ],
            tools=[WEATHER, CLOCK],
            stream=True,
        )
        _chunks, text, calls, finish, _usage = stream_all(stream)
        assert text == ""
        assert finish == "tool_calls"
        assert sorted(calls) == [0, 1]
        assert [calls[i]["name"] for i in (0, 1)] == ["get_weather", "get_time"]
        assert orjson.loads(calls[1]["arguments"]) == {"utc": True}
        assert all(calls[i]["id"].startswith("call_") for i in (0, 1))
        assert calls[0]["id"] != calls[1]["id"]

        # The streamed calls, answered, go back as one function-response turn.
        history: list[Any] = [
            {"role": "user", "content": "Both please"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": calls[i]["id"],
                        "type": "function",
                        "function": {"name": calls[i]["name"], "arguments": calls[i]["arguments"]},
                    }
                    for i in (0, 1)
                ],
            },
            {"role": "tool", "tool_call_id": calls[1]["id"], "content": "12:00"},
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"},
        ]
        answer = client.chat.completions.create(
            model=MODEL, messages=history, tools=[WEATHER, CLOCK]
        )
        assert answer.choices[0].message.content == (
            'Tool result received: {"result":"sunny"}; {"result":"12:00"}'
        )
        assert [
            p["functionResponse"]["name"] for p in last_body(stack)["contents"][2]["parts"]
        ] == [
            "get_weather",
            "get_time",
        ]

    def test_tool_choice_required_forces_a_call(self, gemini: tuple[Stack, openai.OpenAI]) -> None:
        stack, client = gemini
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What time is it?"}],
            tools=[CLOCK],
            tool_choice="required",
        )
        assert completion.choices[0].finish_reason == "tool_calls"
        assert last_body(stack)["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


class TestImages:
    def test_data_url(self, gemini: tuple[Stack, openai.OpenAI]) -> None:
        stack, client = gemini
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{PNG_B64}"},
                        },
                    ],
                }
            ],
        )
        assert (completion.choices[0].message.content or "").startswith("I see 1 image(s). ")
        parts = last_body(stack)["contents"][0]["parts"]
        assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}

    def test_http_url_is_fetched_by_the_worker(
        self, gemini: tuple[Stack, openai.OpenAI], image_host: ImageHost
    ) -> None:
        stack, client = gemini
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "And this?"},
                        {"type": "image_url", "image_url": {"url": image_host.url("/cat.png")}},
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{PNG_B64}"},
                        },
                    ],
                }
            ],
            stream=True,
        )
        _chunks, text, _calls, finish, _usage = stream_all(stream)
        assert text.startswith("I see 2 image(s). ") and finish == "stop"
        assert image_host.hosts == [f"localhost:{image_host.port}"]
        parts = last_body(stack)["contents"][0]["parts"]
        assert parts[1:] == [{"inlineData": {"mimeType": "image/png", "data": PNG_B64}}] * 2

    def test_forbidden_or_broken_image_urls_are_400s(
        self, gemini: tuple[Stack, openai.OpenAI], image_host: ImageHost
    ) -> None:
        stack, client = gemini
        before = len(fake_calls(stack))
        for url in ("http://169.254.169.254/latest/meta-data/", image_host.url("/missing.png")):
            with pytest.raises(openai.BadRequestError) as caught:
                client.chat.completions.create(
                    model=MODEL,
                    messages=[
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": "Look"},
                                {"type": "image_url", "image_url": {"url": url}},
                            ],
                        }
                    ],
                )
            assert caught.value.body["param"] == "messages[0].content[1].image_url.url"  # type: ignore[index]
        assert len(fake_calls(stack)) == before  # Gemini was never called


class TestFailures:
    def test_upstream_400_is_the_clients(self, gemini: tuple[Stack, openai.OpenAI]) -> None:
        _stack, client = gemini
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x [[fake:status=400]]"}]
            )

    def test_rate_limit_is_a_429_with_retry_after(
        self, gemini: tuple[Stack, openai.OpenAI]
    ) -> None:
        _stack, client = gemini
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "x [[fake:status=429,retry_after=1]]"}],
            )
        assert caught.value.response.headers["retry-after"] == "1"

    def test_a_cut_stream_ends_with_an_error(self, gemini: tuple[Stack, openai.OpenAI]) -> None:
        _stack, client = gemini
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x [[fake:chunks=4,drop_after=2]]"}],
            stream=True,
        )
        text = ""
        with pytest.raises(openai.APIError):
            for chunk in stream:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
        assert text and DEFAULT_REPLY.startswith(text) and text != DEFAULT_REPLY
