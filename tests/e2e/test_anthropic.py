"""Anthropic end to end: real api, worker and billing processes, the fake provider speaking
Anthropic's Messages API, and the official OpenAI SDK as the client.

Every body the fake received is checked against the Anthropic SDK's request types, so
what the worker sends is a request Anthropic itself would accept.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any, ClassVar

import openai
import orjson
import pytest
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
)
from openai.types.shared_params import ResponseFormatJSONObject

from services.worker.providers.anthropic import JSON_TOOL_NAME
from tests.e2e.conftest import Stack, http, running_stack
from tests.oracles import validate_openai
from tests.oracles_anthropic import validate_anthropic_request

MODEL = "claude-3-5-sonnet"
UPSTREAM_MODEL = "claude-3-5-sonnet-20241022"
# A real 1x1 PNG, so the data URL is what a client would really send.
PNG_DATA_URL = "data:image/png;base64," + base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
        "0000000d4944415478da63f8cfc0f01f0005000200e5270de40000000049454e44ae426082"
    )
).decode()
WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
TIME: ChatCompletionFunctionToolParam = {
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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The gateway with Anthropic configured and pointed at the fake provider."""
    with running_stack(
        tmp_path_factory,
        demo=False,
        env_overrides={
            "API_KEY_ANTHROPIC": "test-key",
            "BASE_URL_ANTHROPIC": "{fake}/v1",
            # The failure tests must not open the breaker for the tests that follow.
            "CIRCUIT_FAILURE_THRESHOLD": "1000",
        },
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    _, key = stack.new_funded_user("10")
    return openai.OpenAI(api_key=key, base_url=stack.api_url + "/v1", max_retries=0, timeout=30)


@pytest.fixture(autouse=True)
def fresh_calls(stack: Stack) -> None:
    status, _ = http("DELETE", stack.fake_url + "/_fake/calls")
    assert status == 200


def upstream_calls(stack: Stack) -> list[dict[str, Any]]:
    """What the fake received since the test began, each body validated as Anthropic's."""
    status, calls = http("GET", stack.fake_url + "/_fake/calls")
    assert status == 200
    assert calls, "the fake provider received no call"
    for call in calls:
        assert (call["wire"], call["method"], call["path"]) == ("anthropic", "POST", "/v1/messages")
        assert call["has_auth"] is True
        assert call["headers"].get("anthropic-version") == "2023-06-01"
        body = call["body"]
        validate_anthropic_request(body, stream=body.get("stream") is True)
        assert body["model"] == UPSTREAM_MODEL
    return list(calls)


def only_call(stack: Stack) -> dict[str, Any]:
    calls = upstream_calls(stack)
    assert len(calls) == 1
    body: dict[str, Any] = calls[0]["body"]
    return body


def check_chunk_order(chunks: list[ChatCompletionChunk]) -> None:
    """Role first; each tool index first seen with id and name; finish_reason exactly once."""
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    seen: set[int] = set()
    finishes = []
    for chunk in content_chunks:
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or ():
            if call.index not in seen:
                assert call.id and call.function and call.function.name
                seen.add(call.index)
        if choice.finish_reason is not None:
            finishes.append(choice.finish_reason)
    assert len(finishes) == 1
    assert content_chunks[-1].choices[0].finish_reason == finishes[0]


class TestText:
    def test_non_streaming(self, stack: Stack, client: openai.OpenAI) -> None:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hello there"},
            ],
            temperature=0.2,
            user="e2e-user",
        )
        validate_openai("CreateChatCompletionResponse", orjson.loads(raw.content))
        completion = raw.parse()
        choice = completion.choices[0]
        assert choice.message.content and choice.message.content.startswith("Hello")
        assert choice.finish_reason == "stop"
        assert completion.model == MODEL
        usage = completion.usage
        assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

        body = only_call(stack)
        assert body["system"] == [{"type": "text", "text": "You are terse."}]
        assert body["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "Hello there"}]}
        ]
        assert body["max_tokens"] == 8192  # the catalog's limit when the client sets none
        assert body["temperature"] == 0.2
        assert body["metadata"] == {"user_id": "e2e-user"}
        assert "stream" not in body

    def test_streaming_with_usage(self, stack: Stack, client: openai.OpenAI) -> None:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hello there"}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=500,
        )
        chunks = list(stream)
        for chunk in chunks:
            validate_openai("CreateChatCompletionStreamResponse",
                            chunk.model_dump(exclude_unset=True))  # fmt: skip
        check_chunk_order(chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.startswith("Hello")
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].usage.prompt_tokens > 0
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"

        body = only_call(stack)
        assert body["stream"] is True
        assert body["max_tokens"] == 500
        assert "stream_options" not in body

    def test_max_tokens_is_length(self, stack: Stack, client: openai.OpenAI) -> None:
        completion = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=2
        )
        assert completion.choices[0].finish_reason == "length"
        assert only_call(stack)["max_tokens"] == 2


class TestTools:
    def test_tool_call_then_tool_result_turn(self, stack: Stack, client: openai.OpenAI) -> None:
        question: ChatCompletionMessageParam = {
            "role": "user",
            "content": "Weather in Paris? [[fake:tool=get_weather]]",
        }
        first = client.chat.completions.create(model=MODEL, messages=[question], tools=[WEATHER])
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls or []
        assert len(calls) == 1
        call = calls[0]
        assert call.id.startswith("toolu_") and call.type == "function"
        assert call.function.name == "get_weather"
        assert orjson.loads(call.function.arguments) == {"city": "Paris", "days": 1}
        sent = only_call(stack)
        assert sent["tools"][0]["input_schema"] == WEATHER["function"].get("parameters")

        http("DELETE", stack.fake_url + "/_fake/calls")
        second = client.chat.completions.create(
            model=MODEL,
            messages=[
                question,
                {
                    "role": "assistant",
                    "content": choice.message.content,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {
                                "name": call.function.name,
                                "arguments": call.function.arguments,
                            },
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": call.id, "content": "18C, cloudy"},
            ],
            tools=[WEATHER],
        )
        assert second.choices[0].message.content == "Tool result received: 18C, cloudy"
        assert second.choices[0].finish_reason == "stop"
        body = only_call(stack)
        assistant, result = body["messages"][1], body["messages"][2]
        assert assistant["role"] == "assistant"
        assert assistant["content"][-1]["type"] == "tool_use"
        assert assistant["content"][-1]["id"] == call.id
        assert assistant["content"][-1]["input"] == {"city": "Paris", "days": 1}
        assert result == {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C, cloudy"}],
        }

    def test_streamed_parallel_tool_calls(self, stack: Stack, client: openai.OpenAI) -> None:
        chunks: list[ChatCompletionChunk] = []
        with client.chat.completions.stream(
            model=MODEL,
            messages=[{"role": "user", "content": "Both please [[fake:tools=get_weather+get_time]]"}],
            tools=[WEATHER, TIME],
        ) as stream:
            for event in stream:
                if event.type == "chunk":
                    chunks.append(event.chunk)
            final = stream.get_final_completion()
        check_chunk_order(chunks)
        choice = final.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls or []
        assert all(c.type == "function" for c in calls)
        assert [c.function.name for c in calls] == ["get_weather", "get_time"]
        assert [orjson.loads(c.function.arguments) for c in calls] == [
            {"city": "Paris", "days": 1},
            {"utc": True},
        ]
        assert all(c.id.startswith("toolu_") for c in calls)
        assert len({c.id for c in calls}) == 2
        body = only_call(stack)
        assert body["stream"] is True
        assert [t["name"] for t in body["tools"]] == ["get_weather", "get_time"]

    def test_forced_tool_choice(self, stack: Stack, client: openai.OpenAI) -> None:
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What time is it?"}],
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            parallel_tool_calls=False,
        )
        calls = completion.choices[0].message.tool_calls or []
        assert [c.function.name for c in calls] == ["get_time"]  # type: ignore[union-attr]
        assert only_call(stack)["tool_choice"] == {
            "type": "tool",
            "name": "get_time",
            "disable_parallel_tool_use": True,
        }


JSON_OBJECT: ResponseFormatJSONObject = {"type": "json_object"}


class TestJsonMode:
    SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }

    def test_json_schema_answer_is_content(self, stack: Stack, client: openai.OpenAI) -> None:
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe someone"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": self.SCHEMA},
            },
        )
        choice = completion.choices[0]
        assert orjson.loads(choice.message.content or "") == {"name": "Paris", "age": 1}
        assert choice.finish_reason == "stop"
        assert not choice.message.tool_calls
        body = only_call(stack)
        assert body["tool_choice"] == {"type": "tool", "name": JSON_TOOL_NAME}

    def test_streamed_json_object(self, stack: Stack, client: openai.OpenAI) -> None:
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Any JSON"}],
                response_format=JSON_OBJECT,
                stream=True,
            )
        )
        check_chunk_order(chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert isinstance(orjson.loads(text), dict)
        assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason == "stop"
        only_call(stack)


class TestImages:
    def test_image_by_data_url(self, stack: Stack, client: openai.OpenAI) -> None:
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": PNG_DATA_URL, "detail": "low"}},
            ]}],
        )  # fmt: skip
        assert (completion.choices[0].message.content or "").startswith("I see 1 image(s). ")
        image = only_call(stack)["messages"][0]["content"][1]
        assert image == {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": "image/png",
                "data": PNG_DATA_URL.split(",", 1)[1],
            },
        }

    def test_image_by_http_url(self, stack: Stack, client: openai.OpenAI) -> None:
        url = "https://upload.example.org/cat.jpg"
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
                {"type": "text", "text": "Compare them"},
            ]}],
            stream=True,
        )  # fmt: skip
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text.startswith("I see 2 image(s). ")
        content = only_call(stack)["messages"][0]["content"]
        assert content[0] == {"type": "image", "source": {"type": "url", "url": url}}


class TestFailures:
    def test_overloaded_is_retried_then_a_server_error(
        self, stack: Stack, client: openai.OpenAI
    ) -> None:
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi [[fake:status=529]]"}]
            )
        assert caught.value.status_code >= 500
        assert len(upstream_calls(stack)) >= 1

    def test_invalid_request_comes_back_as_400_without_retry(
        self, stack: Stack, client: openai.OpenAI
    ) -> None:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi [[fake:status=400]]"}]
            )
        assert "Invalid request." in caught.value.message
        assert len(upstream_calls(stack)) == 1

    def test_request_anthropic_cannot_take_is_refused_before_any_call(
        self, stack: Stack, client: openai.OpenAI
    ) -> None:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], temperature=1.5
            )
        assert isinstance(caught.value.body, dict)
        assert caught.value.body.get("param") == "temperature"
        status, calls = http("GET", stack.fake_url + "/_fake/calls")
        assert (status, calls) == (200, [])

    @pytest.mark.parametrize("directive", ["drop_after=2", "error_event_after=2"])
    def test_stream_broken_after_content_ends_with_an_error(
        self, stack: Stack, client: openai.OpenAI, directive: str
    ) -> None:
        received: list[str] = []
        with pytest.raises(openai.APIError):
            for chunk in client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Hello [[fake:{directive}]]"}],
                stream=True,
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
        assert received, "content before the failure reached the client"
        assert len(upstream_calls(stack)) == 1  # no fallback once content was delivered
