"""Anthropic Messages API (wire-formats doc §2): request, response, stream and errors.

    adapter.py   AnthropicAdapter: the `ProviderAdapter` the registry holds
    request.py   OpenAI request -> Anthropic body (strict; 400 for what cannot be said)
    messages.py  OpenAI messages -> Anthropic system and alternating turns
    tools.py     OpenAI tools, tool_choice, JSON mode -> Anthropic tools
    response.py  Anthropic message -> OpenAI choice, finish_reason and usage
    stream.py    Anthropic stream events -> OpenAI chunk choices
    errors.py    Anthropic failures -> the gateway's error tree
"""

from __future__ import annotations

from services.worker.providers.anthropic.adapter import AnthropicAdapter
from services.worker.providers.anthropic.errors import classify_error, error_from_payload
from services.worker.providers.anthropic.messages import anthropic_tool_id
from services.worker.providers.anthropic.request import (
    ANTHROPIC_VERSION,
    build_request,
    translate_body,
)
from services.worker.providers.anthropic.response import (
    finish_reason,
    parse_response,
    usage_from_anthropic,
)
from services.worker.providers.anthropic.stream import AnthropicStreamParser
from services.worker.providers.anthropic.tools import JSON_TOOL_NAME

__all__ = [
    "ANTHROPIC_VERSION",
    "JSON_TOOL_NAME",
    "AnthropicAdapter",
    "AnthropicStreamParser",
    "anthropic_tool_id",
    "build_request",
    "classify_error",
    "error_from_payload",
    "finish_reason",
    "parse_response",
    "translate_body",
    "usage_from_anthropic",
]
