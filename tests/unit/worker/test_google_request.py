"""OpenAI request -> Gemini request: every body checked with google-genai's wire models."""

from __future__ import annotations

import base64
from decimal import Decimal
from typing import Any

import orjson
import pytest
from google.genai import types

from services.worker.providers import REGISTRY
from services.worker.providers.base import ChatRequest, Target
from services.worker.providers.google.ids import decode_call_id, encode_call_id
from services.worker.providers.google.request import parse_data_url, translate_body
from shared.catalog import Offer, ProviderConfig
from shared.errors import FinalProviderError
from shared.money import Price
from tests.oracles_gemini import validate_gemini_request

ADAPTER = REGISTRY["google"]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
PNG_B64 = base64.b64encode(PNG).decode()
SIGNATURE = "CiQB4/H/Xt5t+Q=="  # valid base64 with + and / (must survive the id round trip)

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
TIME_TOOL: dict[str, Any] = {"type": "function", "function": {"name": "get_time"}}


def make_target(api_key: str = "g-key-123") -> Target:
    return Target(
        model_id="gemini-2.5-flash",
        provider=ProviderConfig(
            name="google", adapter="google", base_url="https://g.example/v1beta"
        ),
        offer=Offer(
            provider="google",
            upstream_model="gemini-2.5-flash",
            price=Price(Decimal("0.3"), Decimal("2.5")),
        ),
        api_key=api_key,
        base_url="https://g.example/v1beta/",
    )


def body_of(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    body = translate_body({"model": "gemini-2.5-flash", "messages": messages, **extra})
    validate_gemini_request(body)
    return body


class TestHttpCall:
    def test_non_streaming_url_and_key_header(self) -> None:
        req = ChatRequest(
            body={"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
            stream=False,
            include_usage=False,
        )
        call = ADAPTER.build_request(req, make_target())
        assert call.method == "POST"
        assert call.url == "https://g.example/v1beta/models/gemini-2.5-flash:generateContent"
        assert call.headers == {"Content-Type": "application/json", "x-goog-api-key": "g-key-123"}
        assert "g-key-123" not in call.url
        body = orjson.loads(call.body)
        validate_gemini_request(body)
        assert body == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}

    def test_streaming_asks_for_sse(self) -> None:
        req = ChatRequest(
            body={"model": "m", "messages": [{"role": "user", "content": "Hi"}], "stream": True},
            stream=True,
            include_usage=True,
        )
        call = ADAPTER.build_request(req, make_target())
        assert call.url == (
            "https://g.example/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        )
        validate_gemini_request(orjson.loads(call.body))


class TestMessages:
    def test_system_roles_merging_and_images(self) -> None:
        body = body_of(
            [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this image?"},
                        {
                            "type": "image_url",
                            "image_url": {
                                "url": f"data:image/png;base64,{PNG_B64}",
                                "detail": "low",
                            },
                        },
                    ],
                },
                {"role": "user", "content": "Be precise."},
                {"role": "assistant", "content": "Un chat."},
                {"role": "assistant", "content": [{"type": "text", "text": "Noir."}]},
                {"role": "user", "content": "Which breed?"},
            ]
        )
        assert body["systemInstruction"] == {
            "parts": [{"text": "You are terse."}, {"text": "Answer in French."}]
        }
        assert body["contents"] == [
            {
                "role": "user",
                "parts": [
                    {"text": "What is in this image?"},
                    {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
                    {"text": "Be precise."},
                ],
            },
            {"role": "model", "parts": [{"text": "Un chat."}, {"text": "Noir."}]},
            {"role": "user", "parts": [{"text": "Which breed?"}]},
        ]
        blob = types.Content.model_validate_json(orjson.dumps(body["contents"][0])).parts
        assert blob is not None and blob[1].inline_data is not None
        assert blob[1].inline_data.data == PNG  # base64 decoded by the oracle

    def test_only_a_system_message_becomes_the_user_turn(self) -> None:
        body = body_of([{"role": "system", "content": "Say hi."}])
        assert body == {"contents": [{"role": "user", "parts": [{"text": "Say hi."}]}]}

    def test_data_url_forms(self) -> None:
        assert parse_data_url(f"data:;base64,{PNG_B64}", "p") == ("image/png", PNG_B64)
        assert parse_data_url("data:text/plain,a%20b", "p") == ("text/plain", "YSBi")
        wrapped = PNG_B64[:10] + "\n" + PNG_B64[10:]
        assert parse_data_url(f"data:image/png;base64,{wrapped}", "p")[1] == PNG_B64

    @pytest.mark.parametrize(
        ("content", "param"),
        [
            (
                [{"type": "image_url", "image_url": {"url": "data:image/png;base64"}}],
                "messages[0].content[0].image_url.url",
            ),
            (
                [{"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}],
                "messages[0].content[0].image_url.url",
            ),
            (
                [{"type": "file", "file": {"file_id": "file-1"}}],
                "messages[0].content[0].file.file_data",
            ),
        ],
    )
    def test_unusable_parts_are_400s_naming_the_param(self, content: Any, param: str) -> None:
        with pytest.raises(FinalProviderError) as caught:
            translate_body({"messages": [{"role": "user", "content": content}]})
        assert caught.value.http_status == 400 and caught.value.param == param

    def test_audio_and_pdf_are_inline_data(self) -> None:
        pdf = base64.b64encode(b"%PDF-1.7").decode()
        body = body_of(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": PNG_B64, "format": "wav"}},
                        {
                            "type": "file",
                            "file": {"file_data": f"data:application/pdf;base64,{pdf}"},
                        },
                    ],
                }
            ]
        )
        assert body["contents"][0]["parts"] == [
            {"inlineData": {"mimeType": "audio/wav", "data": PNG_B64}},
            {"inlineData": {"mimeType": "application/pdf", "data": pdf}},
        ]


class TestTools:
    def test_declarations_and_every_tool_choice(self) -> None:
        expected_modes: list[tuple[Any, dict[str, Any]]] = [
            ("auto", {"mode": "AUTO"}),
            ("none", {"mode": "NONE"}),
            ("required", {"mode": "ANY"}),
            (
                {"type": "function", "function": {"name": "get_weather"}},
                {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
            ),
            (
                {
                    "type": "allowed_tools",
                    "allowed_tools": {
                        "mode": "required",
                        "tools": [{"type": "function", "function": {"name": "get_time"}}],
                    },
                },
                {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
            ),
        ]
        for choice, config in expected_modes:
            body = body_of(
                [{"role": "user", "content": "Weather?"}],
                tools=[WEATHER_TOOL, TIME_TOOL],
                tool_choice=choice,
            )
            assert body["toolConfig"] == {"functionCallingConfig": config}
            assert body["tools"] == [
                {
                    "functionDeclarations": [
                        {
                            "name": "get_weather",
                            "description": "Current weather",
                            "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],
                        },
                        {"name": "get_time"},
                    ]
                }
            ]
        assert "toolConfig" not in body_of([{"role": "user", "content": "x"}], tools=[TIME_TOOL])

    def test_tool_history_names_order_ids_and_signatures(self) -> None:
        synthetic = encode_call_id(None, SIGNATURE)
        upstream = encode_call_id("fc_2", None)
        body = body_of(
            [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": synthetic,
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": upstream,
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                        },
                    ],
                },
                # Answered out of order: Gemini wants the results in the order of the calls.
                {"role": "tool", "tool_call_id": upstream, "content": '{"temp": 24}'},
                {"role": "tool", "tool_call_id": synthetic, "content": "18C, cloudy"},
                {"role": "user", "content": "Thanks, and tomorrow?"},
            ],
            tools=[WEATHER_TOOL],
        )
        assert body["contents"][1] == {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": SIGNATURE,
                },
                {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}, "id": "fc_2"}},
            ],
        }
        assert body["contents"][2] == {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"result": "18C, cloudy"},
                    }
                },
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"temp": 24},
                        "id": "fc_2",
                    }
                },
                {"text": "Thanks, and tomorrow?"},
            ],
        }

    def test_unknown_tool_call_id_is_a_400(self) -> None:
        with pytest.raises(FinalProviderError) as caught:
            translate_body(
                {
                    "messages": [
                        {"role": "user", "content": "x"},
                        {"role": "tool", "tool_call_id": "call_nope", "content": "1"},
                    ]
                }
            )
        assert caught.value.param == "messages[1].tool_call_id"

    def test_bad_arguments_are_a_400(self) -> None:
        with pytest.raises(FinalProviderError) as caught:
            translate_body(
                {
                    "messages": [
                        {
                            "role": "assistant",
                            "tool_calls": [
                                {
                                    "id": "c1",
                                    "type": "function",
                                    "function": {"name": "f", "arguments": "[1]"},
                                }
                            ],
                        }
                    ]
                }
            )
        assert caught.value.param == "messages[0].tool_calls[0].function.arguments"

    def test_call_ids_round_trip(self) -> None:
        synthetic = encode_call_id(None, None)
        assert synthetic.startswith("call_") and decode_call_id(synthetic) == (None, None)
        assert decode_call_id(encode_call_id("fc_9", SIGNATURE)) == ("fc_9", SIGNATURE)
        packed = encode_call_id(None, SIGNATURE)
        assert all(c.isalnum() or c in "_-" for c in packed)
        assert decode_call_id(packed) == (None, SIGNATURE)
        assert encode_call_id(None, None) != encode_call_id(None, None)


class TestGenerationConfig:
    def test_parameters_map_and_unsupported_ones_are_dropped(self) -> None:
        body = body_of(
            [{"role": "user", "content": "x"}],
            temperature=0.7,
            top_p=0.9,
            max_tokens=50,
            max_completion_tokens=100,
            stop=["END", "STOP"],
            n=2,
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=0,
            response_format={"type": "json_object"},
            logit_bias={"1": 2},
            user="u-1",
            logprobs=True,
            parallel_tool_calls=True,
            reasoning_effort="low",
            provider={"order": ["google"]},
        )
        assert body["generationConfig"] == {
            "temperature": 0.7,
            "topP": 0.9,
            "maxOutputTokens": 100,
            "stopSequences": ["END", "STOP"],
            "candidateCount": 2,
            "seed": 7,
            "presencePenalty": 0.5,
            "responseMimeType": "application/json",
        }
        assert set(body) == {"contents", "generationConfig"}

    def test_max_tokens_and_single_stop_and_json_schema(self) -> None:
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
        body = body_of(
            [{"role": "user", "content": "x"}],
            max_tokens=10,
            stop="END",
            n=1,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "out", "schema": schema, "strict": True},
            },
        )
        assert body["generationConfig"] == {
            "maxOutputTokens": 10,
            "stopSequences": ["END"],
            "responseMimeType": "application/json",
            "responseJsonSchema": schema,
        }


class TestOracle:
    """The oracle must refuse what Gemini refuses, or the tests above prove little."""

    @pytest.mark.parametrize(
        "body",
        [
            {"contents": [{"role": "user", "parts": [{"text": "x"}]}], "model": "m"},
            {"contents": [{"role": "user", "parts": [{"txt": "x"}]}]},
            {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]},
            {"contents": [{"role": "user", "parts": []}]},
            {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "%%%"}}]}]},
            {
                "contents": [{"parts": [{"text": "x"}]}],
                "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}},
            },
            {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"max_tokens": 5}},
        ],
    )
    def test_invalid_bodies_are_refused(self, body: dict[str, Any]) -> None:
        with pytest.raises((AssertionError, ValueError, UserWarning)):
            validate_gemini_request(body)
