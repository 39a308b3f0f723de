"""OpenAI request -> Anthropic Messages request: every body checked by the SDK's types."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, ClassVar

import orjson
import pytest

from services.worker.providers.anthropic.messages import anthropic_tool_id
from services.worker.providers.anthropic.request import ANTHROPIC_VERSION, build_request
from services.worker.providers.anthropic.tools import JSON_TOOL_NAME
from services.worker.providers.base import ChatRequest, Target
from shared.catalog import Offer, ProviderConfig
from shared.errors import FinalProviderError
from shared.money import Price
from tests.oracles import validate_openai_request
from tests.oracles_anthropic import validate_anthropic_request

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time"}}


def target(*, api_key: str = "sk-ant-test", drop: frozenset[str] = frozenset()) -> Target:
    return Target(
        model_id="claude-3-5-sonnet",
        provider=ProviderConfig(
            name="anthropic",
            adapter="anthropic",
            base_url="https://api.anthropic.com/v1",
            drop_params=drop,
        ),
        offer=Offer(
            provider="anthropic",
            upstream_model="claude-3-5-sonnet-20241022",
            price=Price(Decimal(3), Decimal(15)),
            max_output_tokens=8192,
        ),
        api_key=api_key,
        base_url="https://up.example/v1/",
    )


def build(*, stream: bool = False, **body: Any) -> dict[str, Any]:
    """The Anthropic body for an OpenAI body, after checking both against their SDKs."""
    client_body = {"model": "claude-3-5-sonnet", **body}
    if stream:
        client_body["stream"] = True
    validate_openai_request(client_body, stream=stream)
    call = build_request(
        ChatRequest(body=client_body, stream=stream, include_usage=False), target()
    )
    out: dict[str, Any] = orjson.loads(call.body)
    validate_anthropic_request(out, stream=stream)
    return out


def refused(**body: Any) -> FinalProviderError:
    with pytest.raises(FinalProviderError) as caught:
        build_request(
            ChatRequest(body={"model": "claude-3-5-sonnet", **body}, stream=False,
                        include_usage=False),
            target(),
        )
    error = caught.value
    assert error.http_status == 400
    assert error.error_type == "invalid_request_error"
    assert error.provider == "anthropic"
    return error


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


class TestCall:
    def test_url_headers_and_required_fields(self) -> None:
        call = build_request(
            ChatRequest(
                body={"model": "claude-3-5-sonnet", "messages": [user("Hi")]},
                stream=False,
                include_usage=False,
            ),
            target(),
        )
        assert call.method == "POST"
        assert call.url == "https://up.example/v1/messages"
        assert call.headers == {
            "content-type": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
            "x-api-key": "sk-ant-test",
        }
        body = orjson.loads(call.body)
        assert body == {
            "model": "claude-3-5-sonnet-20241022",
            "max_tokens": 8192,  # the catalog offer's limit when the client sets none
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        }
        validate_anthropic_request(body, stream=False)

    def test_no_key_header_without_a_key(self) -> None:
        call = build_request(
            ChatRequest(body={"messages": [user("Hi")]}, stream=False, include_usage=False),
            target(api_key=""),
        )
        assert "x-api-key" not in call.headers

    def test_streaming_sets_stream_and_drops_stream_options(self) -> None:
        body = build(
            stream=True, messages=[user("Hi")], stream_options={"include_usage": True}
        )
        assert body["stream"] is True
        assert "stream_options" not in body

    @pytest.mark.parametrize(
        ("given", "expected"),
        [({"max_completion_tokens": 300}, 300), ({"max_tokens": 200}, 200),
         ({"max_completion_tokens": 300, "max_tokens": 200}, 300), ({}, 8192)],
    )  # fmt: skip
    def test_max_tokens(self, given: dict[str, Any], expected: int) -> None:
        assert build(messages=[user("Hi")], **given)["max_tokens"] == expected


class TestMessages:
    def test_system_and_developer_messages_become_top_level_system_in_order(self) -> None:
        body = build(
            messages=[
                {"role": "system", "content": "You are terse."},
                user("Hi"),
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                user("Again"),
            ]
        )
        assert body["system"] == [
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Answer in French."},
        ]
        assert [m["role"] for m in body["messages"]] == ["user"]
        assert body["messages"][0]["content"] == [
            {"type": "text", "text": "Hi"},
            {"type": "text", "text": "Again"},
        ]

    def test_multi_turn_history_alternates_and_merges_same_role_runs(self) -> None:
        body = build(
            messages=[
                user("one"),
                {"role": "user", "content": [{"type": "text", "text": "two"}], "name": "bob"},
                {"role": "assistant", "content": "three"},
                {"role": "assistant", "content": [{"type": "text", "text": "four"}]},
                {"role": "assistant", "content": ""},  # says nothing: dropped
                user("five"),
            ]
        )
        assert body["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "one"},
                                         {"type": "text", "text": "two"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "three"},
                                              {"type": "text", "text": "four"}]},
            {"role": "user", "content": [{"type": "text", "text": "five"}]},
        ]  # fmt: skip

    def test_final_assistant_prefill_loses_trailing_whitespace(self) -> None:
        body = build(messages=[user("Count"), {"role": "assistant", "content": "1, 2, "}])
        assert body["messages"][-1] == {
            "role": "assistant",
            "content": [{"type": "text", "text": "1, 2,"}],
        }

    def test_empty_user_message_is_refused(self) -> None:
        error = refused(messages=[user("Hi"), {"role": "assistant", "content": "Yes"}, user(" ")])
        assert error.param == "messages[2].content"

    def test_only_system_messages_is_refused(self) -> None:
        assert refused(messages=[{"role": "system", "content": "x"}]).param == "messages"

    def test_image_by_data_url_and_by_http_url(self) -> None:
        body = build(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        {"type": "image_url",
                         "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "low"}},
                        {"type": "image_url", "image_url": {"url": "https://img.example/cat.jpg"}},
                        {"type": "image_url", "image_url": {"url": f"data:image/jpg;base64,{PNG_B64}"}},
                    ],
                }
            ]
        )  # fmt: skip
        assert body["messages"][0]["content"] == [
            {"type": "text", "text": "Compare"},
            {"type": "image",
             "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
            {"type": "image", "source": {"type": "url", "url": "https://img.example/cat.jpg"}},
            {"type": "image",
             "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG_B64}},
        ]  # fmt: skip

    @pytest.mark.parametrize(
        "url",
        [f"data:image/bmp;base64,{PNG_B64}", "data:image/png,rawbytes", "ftp://x/y.png"],
    )
    def test_images_anthropic_cannot_read_are_refused(self, url: str) -> None:
        error = refused(
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
        )
        assert error.param == "messages[0].content[0].image_url.url"

    def test_pdf_file_becomes_a_document_and_audio_is_refused(self) -> None:
        body = build(
            messages=[{"role": "user", "content": [
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=",
                                          "filename": "a.pdf"}},
                {"type": "text", "text": "Summarise"},
            ]}]
        )  # fmt: skip
        assert body["messages"][0]["content"][0] == {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        }
        error = refused(messages=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}])  # fmt: skip
        assert error.code == "unsupported_parameter"


class TestTools:
    def test_tool_definitions(self) -> None:
        body = build(messages=[user("Weather?")], tools=[WEATHER_TOOL, TIME_TOOL])
        assert body["tools"] == [
            {
                "name": "get_weather",
                "description": "Current weather",
                "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
            },
            {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        ]
        assert "tool_choice" not in body

    @pytest.mark.parametrize(
        ("choice", "expected"),
        [
            ("auto", {"type": "auto"}),
            ("none", {"type": "none"}),
            ("required", {"type": "any"}),
            ({"type": "function", "function": {"name": "get_time"}},
             {"type": "tool", "name": "get_time"}),
        ],
    )  # fmt: skip
    def test_tool_choice(self, choice: object, expected: dict[str, Any]) -> None:
        body = build(messages=[user("Hi")], tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=choice)
        assert body["tool_choice"] == expected

    def test_allowed_tools_narrows_the_offered_tools(self) -> None:
        body = build(
            messages=[user("Hi")],
            tools=[WEATHER_TOOL, TIME_TOOL],
            tool_choice={
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "get_time"}}],
                },
            },
        )
        assert [t["name"] for t in body["tools"]] == ["get_time"]
        assert body["tool_choice"] == {"type": "any"}

    @pytest.mark.parametrize(
        ("choice", "expected"),
        [
            (None, {"type": "auto", "disable_parallel_tool_use": True}),
            ("required", {"type": "any", "disable_parallel_tool_use": True}),
            ({"type": "function", "function": {"name": "get_weather"}},
             {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}),
            ("none", {"type": "none"}),
        ],
    )  # fmt: skip
    def test_parallel_tool_calls_false(self, choice: object, expected: dict[str, Any]) -> None:
        extra: dict[str, Any] = {} if choice is None else {"tool_choice": choice}
        body = build(
            messages=[user("Hi")], tools=[WEATHER_TOOL], parallel_tool_calls=False, **extra
        )
        assert body["tool_choice"] == expected

    def test_parallel_tool_calls_true_adds_nothing(self) -> None:
        body = build(messages=[user("Hi")], tools=[WEATHER_TOOL], parallel_tool_calls=True)
        assert "tool_choice" not in body

    def test_tool_history_with_parallel_calls_and_results(self) -> None:
        body = build(
            messages=[
                user("Weather in Paris and Rome?"),
                {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [
                        {"id": "call_a1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                        {"id": "call_b2", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
                    ],
                },
                {"role": "tool", "tool_call_id": "call_a1", "content": "18C, cloudy"},
                {"role": "tool", "tool_call_id": "call_b2",
                 "content": [{"type": "text", "text": "24C, sunny"}]},
                user("And tomorrow?"),
            ],
            tools=[WEATHER_TOOL],
        )  # fmt: skip
        assert body["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "call_a1", "name": "get_weather",
                 "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_b2", "name": "get_weather",
                 "input": {"city": "Rome"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_a1", "content": "18C, cloudy"},
                {"type": "tool_result", "tool_use_id": "call_b2",
                 "content": [{"type": "text", "text": "24C, sunny"}]},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ]  # fmt: skip

    def test_tool_ids_are_sanitised_the_same_way_in_calls_and_results(self) -> None:
        odd = "functions.get_weather:0"
        body = build(
            messages=[
                user("Weather?"),
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": odd, "type": "function",
                     "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": odd, "content": "ok"},
            ],
            tools=[WEATHER_TOOL],
        )  # fmt: skip
        use_id = body["messages"][1]["content"][0]["id"]
        result_id = body["messages"][2]["content"][0]["tool_use_id"]
        assert use_id == result_id == anthropic_tool_id(odd)
        assert re.fullmatch(r"[a-zA-Z0-9_-]+", use_id)
        assert anthropic_tool_id("functions.get_weather_0") != anthropic_tool_id(odd)
        assert anthropic_tool_id("toolu_01D7FLrfh4GYq7yT1ULFeyMV") == "toolu_01D7FLrfh4GYq7yT1ULFeyMV"

    @pytest.mark.parametrize("arguments", ['{"city": "Par', "[1, 2]", "null"])
    def test_tool_arguments_that_are_not_a_json_object_are_refused(self, arguments: str) -> None:
        error = refused(
            messages=[
                user("Weather?"),
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": arguments}}]},
            ],
            tools=[WEATHER_TOOL],
        )  # fmt: skip
        assert error.param == "messages[1].tool_calls[0].function.arguments"
        assert "JSON" in error.message

    def test_tool_history_without_tools_declares_them_and_forbids_new_calls(self) -> None:
        body = build(
            messages=[
                user("Weather?"),
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "-3C"},
            ]
        )  # fmt: skip
        assert body["tools"] == [
            {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}
        ]
        assert body["tool_choice"] == {"type": "none"}


class TestParameters:
    def test_sampling_stop_and_user(self) -> None:
        body = build(
            messages=[user("Hi")], temperature=0.3, stop="END", user="user-42", max_tokens=50
        )
        assert body["temperature"] == 0.3
        assert body["stop_sequences"] == ["END"]
        assert body["metadata"] == {"user_id": "user-42"}
        assert build(messages=[user("Hi")], stop=["a", "b"])["stop_sequences"] == ["a", "b"]

    def test_top_p_alone_is_sent_and_with_temperature_only_temperature_is(self) -> None:
        assert build(messages=[user("Hi")], top_p=0.9)["top_p"] == 0.9
        both = build(messages=[user("Hi")], temperature=0.5, top_p=0.9)
        assert both["temperature"] == 0.5
        assert "top_p" not in both

    def test_temperature_above_one_is_refused_not_clamped(self) -> None:
        error = refused(messages=[user("Hi")], temperature=1.5)
        assert error.param == "temperature"
        assert "0 and 1" in error.message

    def test_n_above_one_is_refused(self) -> None:
        error = refused(messages=[user("Hi")], n=2)
        assert (error.param, error.code) == ("n", "unsupported_parameter")
        assert "n" not in build(messages=[user("Hi")], n=1)

    def test_whitespace_stop_sequence_is_refused(self) -> None:
        assert refused(messages=[user("Hi")], stop=["\n"]).param == "stop"

    def test_unsupported_openai_parameters_are_dropped(self) -> None:
        body = build(
            messages=[user("Hi")],
            seed=7,
            logprobs=True,
            top_logprobs=2,
            logit_bias={"50256": -100},
            presence_penalty=0.5,
            frequency_penalty=0.5,
            store=True,
            metadata={"k": "v"},
            service_tier="auto",
            reasoning_effort="low",
            response_format={"type": "text"},
        )
        assert set(body) == {"model", "max_tokens", "messages"}

    def test_catalog_drop_params_are_honoured(self) -> None:
        call = build_request(
            ChatRequest(
                body={"messages": [user("Hi")], "temperature": 0.5, "top_p": 0.9, "n": 2},
                stream=False,
                include_usage=False,
            ),
            target(drop=frozenset({"temperature", "top_p", "n"})),
        )
        body = orjson.loads(call.body)
        validate_anthropic_request(body, stream=False)
        assert set(body) == {"model", "max_tokens", "messages"}

    def test_gateway_routing_fields_are_not_sent(self) -> None:
        call = build_request(
            ChatRequest(
                body={"messages": [user("Hi")], "provider": {"order": ["anthropic"]},
                      "models": ["claude-3-5-sonnet"]},
                stream=False,
                include_usage=False,
            ),
            target(),
        )  # fmt: skip
        assert set(orjson.loads(call.body)) == {"model", "max_tokens", "messages"}


class TestJsonMode:
    SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }

    def test_json_schema_is_a_forced_tool(self) -> None:
        body = build(
            messages=[user("Describe Ada")],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": self.SCHEMA, "strict": True},
            },
        )
        assert body["tools"] == [
            {
                "name": JSON_TOOL_NAME,
                "description": "Give your whole answer as JSON matching this schema through "
                "this tool.",
                "input_schema": self.SCHEMA,
            }
        ]
        assert body["tool_choice"] == {"type": "tool", "name": JSON_TOOL_NAME}

    def test_json_object_is_a_forced_tool_taking_any_object(self) -> None:
        body = build(messages=[user("JSON please")], response_format={"type": "json_object"})
        assert body["tools"][0]["name"] == JSON_TOOL_NAME
        assert body["tools"][0]["input_schema"]["type"] == "object"
        assert body["tool_choice"] == {"type": "tool", "name": JSON_TOOL_NAME}

    def test_with_client_tools_the_model_must_call_one_of_them_or_the_json_tool(self) -> None:
        body = build(
            messages=[user("Weather?")],
            tools=[WEATHER_TOOL],
            response_format={"type": "json_object"},
        )
        assert [t["name"] for t in body["tools"]] == ["get_weather", JSON_TOOL_NAME]
        assert body["tool_choice"] == {"type": "any"}

    def test_schema_that_is_not_an_object_is_refused(self) -> None:
        error = refused(
            messages=[user("List")],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "list", "schema": {"type": "array"}},
            },
        )
        assert error.param == "response_format.json_schema.schema"

    def test_client_tool_may_not_take_the_reserved_name(self) -> None:
        error = refused(
            messages=[user("Hi")],
            tools=[{"type": "function", "function": {"name": JSON_TOOL_NAME}}],
        )
        assert error.param == "tools[0].function.name"


class TestOracle:
    """The oracle itself must catch what the TypedDicts would let slip."""

    BODY: ClassVar[dict[str, Any]] = {
        "model": "claude-3-5-sonnet-20241022",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    }

    def test_accepts_a_valid_body(self) -> None:
        validate_anthropic_request(self.BODY, stream=False)
        validate_anthropic_request({**self.BODY, "stream": True}, stream=True)

    def test_reports_an_unknown_key_at_any_depth(self) -> None:
        with pytest.raises(ValueError, match="body.tools"):
            validate_anthropic_request(
                {**self.BODY, "tools": [{"name": "f", "input_schema": {"type": "object"},
                                         "parameters": {}}]},
                stream=False,
            )  # fmt: skip
        with pytest.raises(ValueError, match=r"messages\[0\].content\[0\].detail"):
            validate_anthropic_request(
                {**self.BODY, "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "Hi", "detail": "low"}]}]},
                stream=False,
            )  # fmt: skip
        with pytest.raises(ValueError, match="stop"):
            validate_anthropic_request({**self.BODY, "stop": ["x"]}, stream=False)

    def test_reports_nested_errors_in_lazy_iterables(self) -> None:
        bad_image = {"type": "image",
                     "source": {"type": "base64", "media_type": "image/bmp", "data": "x"}}  # fmt: skip
        with pytest.raises(ValueError):
            validate_anthropic_request(
                {**self.BODY, "messages": [{"role": "user", "content": [bad_image]}]},
                stream=False,
            )

    def test_checks_the_sampling_fields_by_hand(self) -> None:
        validate_anthropic_request({**self.BODY, "temperature": 0.5, "top_p": 1}, stream=False)
        with pytest.raises(ValueError, match="temperature"):
            validate_anthropic_request({**self.BODY, "temperature": 1.5}, stream=False)
