"""Validation oracle for Anthropic request bodies: the official SDK's types (wire-formats
doc §7.3).

    validate_anthropic_request(body, stream=False)   # raises unless the SDK accepts it whole

`MessageCreateParams*` are TypedDicts, which pydantic validates with two traps: fields
typed `Iterable[...]` validate lazily (nested errors surface only when iterated), and
unknown keys are dropped silently. So the result is materialised recursively, then walked
beside the input: any key the types did not keep, at any depth, fails the check.

anthropic >= 1.0 removed `temperature`, `top_p` and `top_k` from its request types (the
API deprecated them; models that predate the change still honour them and the SDK's
MIGRATION.md sends them through `extra_body`). When the installed SDK lacks them, they
are checked here by hand instead of being reported as unknown.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from anthropic.types import message_create_params
from pydantic import BaseModel, TypeAdapter

# Sampling fields the API accepts beyond the SDK >= 1.0 types: name -> (low, high, kind).
SAMPLING_FIELDS: dict[str, tuple[float, float, type]] = {
    "temperature": (0.0, 1.0, float),
    "top_p": (0.0, 1.0, float),
    "top_k": (0, 1 << 31, int),
}


class AnthropicRequestError(ValueError):
    """The body is not a request the Anthropic SDK's types accept in full."""


@functools.cache
def _params(stream: bool) -> Any:
    return (
        message_create_params.MessageCreateParamsStreaming
        if stream
        else message_create_params.MessageCreateParamsNonStreaming
    )


@functools.cache
def _adapter(stream: bool) -> TypeAdapter[Any]:
    return TypeAdapter(_params(stream))


def _materialise(value: Any) -> Any:
    """Force pydantic's lazy `Iterable[...]` validators, so nested errors surface."""
    if isinstance(value, BaseModel):
        return value  # a response model matched; `_dropped` reports it
    if isinstance(value, Mapping):
        return {k: _materialise(v) for k, v in value.items()}
    if isinstance(value, str | bytes | bytearray):
        return value
    if isinstance(value, list | tuple) or hasattr(value, "__iter__"):
        return [_materialise(v) for v in value]
    return value


def _dropped(sent: Any, kept: Any, path: str) -> list[str]:
    """Paths of what `sent` held that the validated `kept` lost."""
    if isinstance(kept, BaseModel):
        return [f"{path} (matched the response model {type(kept).__name__}, no request type)"]
    if isinstance(sent, Mapping):
        if not isinstance(kept, Mapping):
            return [f"{path} (became {type(kept).__name__})"]
        lost = [f"{path}.{key}" for key in sent if key not in kept]
        for key, value in sent.items():
            if key in kept:
                lost.extend(_dropped(value, kept[key], f"{path}.{key}"))
        return lost
    if isinstance(sent, list | tuple):
        if not isinstance(kept, list) or len(kept) != len(sent):
            return [f"{path} (list changed)"]
        lost = []
        for i, (a, b) in enumerate(zip(sent, kept, strict=True)):
            lost.extend(_dropped(a, b, f"{path}[{i}]"))
        return lost
    return []


def _check_sampling(body: dict[str, Any], known: frozenset[str]) -> None:
    for name, (low, high, kind) in SAMPLING_FIELDS.items():
        if name not in body or name in known:
            continue
        value = body.pop(name)
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or (kind is int and not isinstance(value, int)) or not low <= value <= high:
            raise AnthropicRequestError(f"{name}={value!r} is not a valid Anthropic {name}")


def validate_anthropic_request(body: Mapping[str, Any], *, stream: bool) -> None:
    """Raise `AnthropicRequestError` (or pydantic's `ValidationError`) unless the official
    SDK's `MessageCreateParams{Non,}Streaming` accepts `body` and keeps every key in it."""
    body = dict(body)
    if stream and body.get("stream") is not True:
        raise AnthropicRequestError("a streaming request must carry stream: true")
    _check_sampling(body, frozenset(_params(stream).__annotations__))
    validated = _materialise(_adapter(stream).validate_python(body))
    lost = _dropped(body, validated, "body")
    if lost:
        raise AnthropicRequestError(f"keys unknown to the Anthropic request types: {lost}")
