"""OpenAI `messages` -> Anthropic `system` and alternating turns (wire-formats doc §2.2, §2.3).

    system / developer messages -> top-level `system` text blocks, in order
    user / assistant runs       -> one turn per run of the same role (Anthropic alternates)
    tool messages               -> `tool_result` blocks of a user turn, placed first
    assistant tool_calls        -> `tool_use` blocks (arguments parsed; ids sanitised the
                                   same way as in the results that answer them)
    image_url                   -> `image` (base64 from a data: URL, or a url source)
    file with a PDF data URL    -> `document`
    empty or blank text         -> dropped (Anthropic rejects it); an empty user message -> 400
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

from services.worker.providers.anthropic.errors import invalid, unsupported

IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_MEDIA_ALIASES = {"image/jpg": "image/jpeg"}

_TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")
_NOT_TOOL_ID_CHAR = re.compile(r"[^a-zA-Z0-9_-]")


def anthropic_tool_id(call_id: str) -> str:
    """`call_id` as a valid Anthropic tool id (^[a-zA-Z0-9_-]+$), the same every time.

    Valid ids pass unchanged; any other id gets its bad characters replaced and a short
    digest of the original appended, so two different ids never meet in one request.
    """
    if _TOOL_ID.fullmatch(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode()).hexdigest()[:12]
    return f"{_NOT_TOOL_ID_CHAR.sub('_', call_id)}_{digest}"


def translate_messages(raw: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system text blocks, alternating user/assistant turns) for OpenAI `messages`."""
    if not isinstance(raw, list) or not raw:
        raise invalid("'messages' must be a non-empty array.", "messages")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(f"'{where}' must be an object.", where)
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_system_blocks(message.get("content"), f"{where}.content"))
            continue
        if role == "user":
            anthropic_role, blocks = "user", _user_blocks(message.get("content"), where)
            if not blocks:
                raise invalid(
                    f"'{where}.content' is empty; Anthropic models reject empty messages.",
                    f"{where}.content",
                )
        elif role == "assistant":
            anthropic_role, blocks = "assistant", _assistant_blocks(message, where)
            if not blocks:
                continue  # an empty assistant turn carries nothing to the model
        elif role == "tool":
            anthropic_role, blocks = "user", [_tool_result(message, where)]
        else:
            raise unsupported(f"{where}.role", f"role {role!r} cannot be translated.")
        # Anthropic wants alternating turns: a run of same-role messages is one turn.
        if turns and turns[-1]["role"] == anthropic_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": anthropic_role, "content": blocks})
    if not turns:
        raise invalid("'messages' needs at least one user or assistant message.", "messages")
    for turn in turns:
        if turn["role"] == "user":
            # tool_result blocks must open their user turn; keep everything else in order.
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    _trim_prefill(turns)
    return system, turns


def _trim_prefill(turns: list[dict[str, Any]]) -> None:
    # A final assistant turn is a prefill, and Anthropic rejects one ending in whitespace.
    last = turns[-1]
    if last["role"] != "assistant" or last["content"][-1]["type"] != "text":
        return
    block = last["content"][-1]
    block["text"] = block["text"].rstrip()
    if not block["text"]:
        last["content"].pop()
        if not last["content"]:
            turns.pop()
            if not turns:
                raise invalid("'messages' needs at least one user message.", "messages")


def _text(text: str) -> list[dict[str, Any]]:
    # Anthropic rejects empty and whitespace-only text blocks.
    return [{"type": "text", "text": text}] if text.strip() else []


def _parts(content: object, where: str) -> list[Any]:
    if isinstance(content, list):
        return content
    raise invalid(f"'{where}' must be a string or an array of content parts.", where)


def _system_blocks(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return _text(content)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(_parts(content, where)):
        text = part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None
        if not isinstance(text, str):
            raise invalid(f"'{where}[{j}]' must be a text part.", f"{where}[{j}]")
        blocks.extend(_text(text))
    return blocks


def _user_blocks(content: object, where: str) -> list[dict[str, Any]]:
    at = f"{where}.content"
    if isinstance(content, str):
        return _text(content)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(_parts(content, at)):
        part_at = f"{at}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            blocks.extend(_text(part["text"]))
        elif kind == "image_url":
            blocks.append(_image_block(part, part_at))
        elif kind == "file":
            blocks.append(_document_block(part, part_at))
        elif kind == "input_audio":
            raise unsupported(part_at, "audio input cannot be sent to Anthropic models.")
        else:
            raise invalid(f"'{part_at}' is not a supported content part.", part_at)
    return blocks


def _data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:<type>;base64,<data>` URL, else None."""
    header, comma, data = url.removeprefix("data:").partition(",")
    media_type, *params = header.split(";")
    if not comma or "base64" not in params or not data:
        return None
    media_type = media_type.strip().lower()
    return _MEDIA_ALIASES.get(media_type, media_type), data


def _image_block(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    at = f"{where}.image_url.url"
    if not isinstance(url, str):
        raise invalid(f"'{at}' must be a string.", at)
    if url.startswith("data:"):
        decoded = _data_url(url)
        if decoded is None:
            raise invalid(f"'{at}' must be a base64 data URL (data:image/png;base64,...).", at)
        media_type, data = decoded
        if media_type not in IMAGE_MEDIA_TYPES:
            raise invalid(
                f"'{at}' has media type {media_type!r}; Anthropic models read "
                f"{', '.join(sorted(IMAGE_MEDIA_TYPES))}.",
                at,
            )
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid(f"'{at}' must be a data: URL or an http(s) URL.", at)


def _document_block(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    file = part.get("file")
    file_data = file.get("file_data") if isinstance(file, dict) else None
    decoded = _data_url(file_data) if isinstance(file_data, str) else None
    if decoded is None or decoded[0] != "application/pdf":
        raise unsupported(
            f"{where}.file", "only PDF files sent inline as a base64 data URL can be read."
        )
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": decoded[1]},
    }


def _assistant_blocks(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    content = message.get("content")
    at = f"{where}.content"
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        blocks.extend(_text(content))
    elif content is not None:
        for j, part in enumerate(_parts(content, at)):
            kind = part.get("type") if isinstance(part, dict) else None
            field = "text" if kind == "text" else "refusal" if kind == "refusal" else None
            if field is None or not isinstance(part.get(field), str):
                raise invalid(f"'{at}[{j}]' must be a text or refusal part.", f"{at}[{j}]")
            blocks.extend(_text(part[field]))
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise invalid(f"'{where}.tool_calls' must be an array.", f"{where}.tool_calls")
    blocks.extend(_tool_use(call, f"{where}.tool_calls[{k}]") for k, call in enumerate(calls))
    return blocks


def _tool_use(call: object, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if (
        not isinstance(call, dict)
        or call.get("type", "function") != "function"
        or not isinstance(call.get("id"), str)
        or not isinstance(function, dict)
        or not isinstance(function.get("name"), str)
    ):
        raise invalid(f"'{where}' must be a function call with an 'id' and a 'name'.", where)
    arguments = function.get("arguments") or "{}"
    at = f"{where}.function.arguments"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else None
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise invalid(f"'{at}' must be a JSON object encoded as a string.", at)
    return {
        "type": "tool_use",
        "id": anthropic_tool_id(call["id"]),
        "name": function["name"],
        "input": parsed,
    }


def _tool_result(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        at = f"{where}.tool_call_id"
        raise invalid(f"'{at}' is required for tool messages.", at)
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": anthropic_tool_id(call_id)}
    content = message.get("content")
    if isinstance(content, str):
        if content.strip():
            block["content"] = content
    elif content is not None:
        texts = _system_blocks(content, f"{where}.content")  # tool results are text parts
        if texts:
            block["content"] = texts
    return block
