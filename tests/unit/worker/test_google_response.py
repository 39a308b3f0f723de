"""Gemini responses -> OpenAI completions, from recorded fixtures (wire-formats doc §3.4).

Every fixture is first checked with google-genai's response model (so it is something
Gemini really sends), and every translation is wrapped as job.py wraps it and checked
with the OpenAI SDK's `ChatCompletion` and the OpenAPI spec.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion

from services.worker.providers import REGISTRY
from services.worker.providers.base import Completion
from services.worker.providers.google.ids import decode_call_id
from services.worker.providers.google.request import translate_body
from shared.errors import FinalProviderError, RetryableProviderError
from shared.messages import Usage
from tests.oracles import validate_openai
from tests.oracles_gemini import validate_gemini_request, validate_gemini_response

ADAPTER = REGISTRY["google"]
SIGNATURE = "CiQB4/H/Xt5t+Q=="

TEXT: dict[str, Any] = {
    "candidates": [
        {
            "content": {"role": "model", "parts": [{"text": "Paris is "}, {"text": "sunny."}]},
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}
            ],
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 12,
        "candidatesTokenCount": 5,
        "totalTokenCount": 17,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}],
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "AdVRaMmDCYekqtsPrb_-iAw",
}
THOUGHTS_AND_CACHE: dict[str, Any] = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "Let me think about the weather...", "thought": True},
                    {"text": "Sunny."},
                ],
            },
            "finishReason": "STOP",
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 1200,
        "candidatesTokenCount": 5,
        "thoughtsTokenCount": 40,
        "cachedContentTokenCount": 1000,
        "toolUsePromptTokenCount": 8,
        "totalTokenCount": 1253,
    },
}
FUNCTION_CALL: dict[str, Any] = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {
                        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                        "thoughtSignature": SIGNATURE,
                    }
                ],
            },
            "finishReason": "STOP",
        }
    ],
    "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 7, "totalTokenCount": 27},
}
PARALLEL_CALLS: dict[str, Any] = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "Checking both."},
                    {
                        "functionCall": {
                            "id": "fc_1",
                            "name": "get_weather",
                            "args": {"city": "Paris"},
                        }
                    },
                    {
                        "functionCall": {
                            "id": "fc_2",
                            "name": "get_weather",
                            "args": {"city": "Rome"},
                        }
                    },
                ],
            },
            "finishReason": "STOP",
        }
    ],
    "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 14, "totalTokenCount": 34},
}
MAX_TOKENS: dict[str, Any] = {
    "candidates": [
        {
            "content": {"role": "model", "parts": [{"text": "Once upon a"}]},
            "finishReason": "MAX_TOKENS",
        }
    ],
    "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7},
}
SAFETY: dict[str, Any] = {
    "candidates": [
        {
            "finishReason": "SAFETY",
            "index": 0,
            "safetyRatings": [
                {
                    "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                    "probability": "HIGH",
                    "blocked": True,
                }
            ],
        }
    ],
    "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
}
BLOCKED_PROMPT: dict[str, Any] = {
    "promptFeedback": {
        "blockReason": "PROHIBITED_CONTENT",
        "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH"}],
    },
    "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
}
TWO_CANDIDATES: dict[str, Any] = {
    "candidates": [
        {
            "content": {"role": "model", "parts": [{"text": "B"}]},
            "finishReason": "STOP",
            "index": 1,
        },
        {"content": {"role": "model", "parts": [{"text": "A"}]}, "finishReason": "STOP"},
    ],
    "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 2, "totalTokenCount": 4},
}


def completion(fixture: dict[str, Any]) -> tuple[Completion, ChatCompletion]:
    raw = orjson.dumps(fixture)
    validate_gemini_response(raw)
    result = ADAPTER.parse_response(raw)
    # Exactly the body job.py sends the client.
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gemini-2.5-flash",
        "choices": result.choices,
        "usage": (result.usage or Usage()).to_openai(),
        **result.extra,
    }
    validate_openai("CreateChatCompletionResponse", body)
    return result, ChatCompletion.model_validate(body)


class TestParseResponse:
    def test_text(self) -> None:
        result, parsed = completion(TEXT)
        assert parsed.choices[0].message.content == "Paris is sunny."
        assert parsed.choices[0].message.tool_calls is None
        assert parsed.choices[0].finish_reason == "stop"
        assert result.usage == Usage(prompt_tokens=12, completion_tokens=5)

    def test_thoughts_never_leak_and_usage_counts_them(self) -> None:
        result, parsed = completion(THOUGHTS_AND_CACHE)
        assert parsed.choices[0].message.content == "Sunny."
        assert result.usage == Usage(
            prompt_tokens=1208, completion_tokens=45, cached_tokens=1000, reasoning_tokens=40
        )
        assert parsed.usage is not None and parsed.usage.total_tokens == 1253

    def test_inclusive_candidate_count_is_not_added_twice(self) -> None:
        fixture = {
            **TEXT,
            "usageMetadata": {
                "promptTokenCount": 10,
                "candidatesTokenCount": 50,
                "thoughtsTokenCount": 40,
                "totalTokenCount": 60,
            },
        }
        result, _ = completion(fixture)
        assert result.usage == Usage(prompt_tokens=10, completion_tokens=50, reasoning_tokens=40)

    def test_function_call(self) -> None:
        _, parsed = completion(FUNCTION_CALL)
        choice = parsed.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        calls = choice.message.tool_calls or []
        assert len(calls) == 1
        assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
        assert calls[0].function.arguments == '{"city":"Paris"}'  # type: ignore[union-attr]
        assert decode_call_id(calls[0].id) == (None, SIGNATURE)

    def test_parallel_calls_keep_upstream_ids(self) -> None:
        _, parsed = completion(PARALLEL_CALLS)
        choice = parsed.choices[0]
        assert choice.message.content == "Checking both."
        assert [c.id for c in choice.message.tool_calls or []] == ["fc_1", "fc_2"]
        assert choice.finish_reason == "tool_calls"

    @pytest.mark.parametrize(
        ("fixture", "reason", "content"),
        [
            (MAX_TOKENS, "length", "Once upon a"),
            (SAFETY, "content_filter", None),
            (BLOCKED_PROMPT, "content_filter", None),
        ],
    )
    def test_finish_reasons(
        self, fixture: dict[str, Any], reason: str, content: str | None
    ) -> None:
        _, parsed = completion(fixture)
        assert len(parsed.choices) == 1
        assert parsed.choices[0].finish_reason == reason
        assert parsed.choices[0].message.content == content

    @pytest.mark.parametrize(
        ("gemini", "openai"),
        [
            ("RECITATION", "content_filter"),
            ("LANGUAGE", "content_filter"),
            ("OTHER", "content_filter"),
            ("IMAGE_SAFETY", "content_filter"),
            ("MALFORMED_FUNCTION_CALL", "stop"),
            ("FINISH_REASON_UNSPECIFIED", "stop"),
            ("SOMETHING_NEW", "stop"),
        ],
    )
    def test_finish_reason_table(self, gemini: str, openai: str) -> None:
        fixture = {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": "x"}]}, "finishReason": gemini}
            ]
        }
        raw = orjson.dumps(fixture)
        assert ADAPTER.parse_response(raw).choices[0]["finish_reason"] == openai

    def test_candidates_become_ordered_choices(self) -> None:
        _, parsed = completion(TWO_CANDIDATES)
        assert [(c.index, c.message.content) for c in parsed.choices] == [(0, "A"), (1, "B")]

    def test_bodies_that_are_not_answers(self) -> None:
        with pytest.raises(RetryableProviderError):
            ADAPTER.parse_response(b"<html>")
        with pytest.raises(RetryableProviderError):
            ADAPTER.parse_response(b'{"usageMetadata": {}}')
        with pytest.raises(FinalProviderError):
            ADAPTER.parse_response(
                b'{"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}'
            )


class TestIdsAcrossTurns:
    def test_the_client_sends_back_what_it_got(self) -> None:
        """Turn 1's answer, replayed by an OpenAI client, maps back to the same Gemini call."""
        _, parsed = completion(
            {
                **PARALLEL_CALLS,
                "candidates": [
                    {
                        **PARALLEL_CALLS["candidates"][0],
                        "content": {
                            "role": "model",
                            "parts": [
                                FUNCTION_CALL["candidates"][0]["content"]["parts"][0],
                                PARALLEL_CALLS["candidates"][0]["content"]["parts"][2],
                            ],
                        },
                    }
                ],
            }
        )
        assistant = parsed.choices[0].message.model_dump(exclude_none=True)
        calls = assistant["tool_calls"]
        turn2 = translate_body(
            {
                "messages": [
                    {"role": "user", "content": "Weather in Paris and Rome?"},
                    assistant,
                    {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18C"},
                    {"role": "tool", "tool_call_id": calls[1]["id"], "content": "24C"},
                ]
            }
        )
        validate_gemini_request(turn2)
        model_turn, results = turn2["contents"][1], turn2["contents"][2]
        assert model_turn["parts"] == [
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                "thoughtSignature": SIGNATURE,
            },
            {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}, "id": "fc_2"}},
        ]
        assert results["parts"] == [
            {"functionResponse": {"name": "get_weather", "response": {"result": "18C"}}},
            {
                "functionResponse": {
                    "name": "get_weather",
                    "response": {"result": "24C"},
                    "id": "fc_2",
                }
            },
        ]
