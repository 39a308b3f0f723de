"""Validation oracle for Gemini request bodies (wire-formats doc §7.4).

google-genai has no type for the whole `generateContent` body, so each documented
top-level field is validated with its own model (all `extra="forbid"`, camelCase
aliases), warnings (unknown enum values) raised as errors, and the set of top-level keys
checked against the REST reference. Passing is necessary, not sufficient: the models
cover Vertex AI too, so they accept a few fields the Gemini API does not.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import orjson
from google.genai import types

GEMINI_TOP_LEVEL_KEYS = frozenset(
    {
        "contents",
        "systemInstruction",
        "tools",
        "toolConfig",
        "generationConfig",
        "safetySettings",
        "cachedContent",
    }
)


def validate_gemini_request(body: Mapping[str, Any]) -> None:
    """Raise (pydantic.ValidationError, AssertionError or a warning) unless `body` is valid."""
    unknown = set(body) - GEMINI_TOP_LEVEL_KEYS
    assert not unknown, f"top-level keys the Gemini API does not document: {sorted(unknown)}"
    contents = body.get("contents")
    assert isinstance(contents, list) and contents, "'contents' must be a non-empty list"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for item in contents:
            # JSON mode, as on the wire: bytes fields must be valid base64.
            content = types.Content.model_validate_json(orjson.dumps(item))
            assert content.role in ("user", "model"), f"bad role {content.role!r}"
            assert content.parts, "a Content must have parts"
        if "systemInstruction" in body:
            types.Content.model_validate_json(orjson.dumps(body["systemInstruction"]))
        for tool in body.get("tools") or ():
            types.Tool.model_validate_json(orjson.dumps(tool))
        if "toolConfig" in body:
            types.ToolConfig.model_validate_json(orjson.dumps(body["toolConfig"]))
        if "generationConfig" in body:
            types.GenerationConfig.model_validate_json(orjson.dumps(body["generationConfig"]))
        for setting in body.get("safetySettings") or ():
            types.SafetySetting.model_validate_json(orjson.dumps(setting))


def validate_gemini_response(raw: bytes) -> types.GenerateContentResponse:
    """A recorded Gemini response or stream chunk, checked against google-genai's model."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return types.GenerateContentResponse.model_validate_json(raw)
