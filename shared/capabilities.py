"""What a chat request needs from a model: tools, vision, JSON output."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TOOLS = "tools"
VISION = "vision"
JSON = "json"
STREAMING = "streaming"


def required_capabilities(body: Mapping[str, Any]) -> frozenset[str]:
    needs: set[str] = set()
    if body.get("tools"):
        needs.add(TOOLS)
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") in {
        "json_object",
        "json_schema",
    }:
        needs.add(JSON)
    if body.get("stream"):
        needs.add(STREAMING)
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list) and any(
            isinstance(part, Mapping) and part.get("type") == "image_url" for part in content
        ):
            needs.add(VISION)
            break
    return frozenset(needs)
