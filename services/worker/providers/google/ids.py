"""OpenAI tool-call ids for Gemini function calls, carrying what the next turn needs.

Gemini often sends function calls without an id, and a thinking model's call may carry
an opaque `thoughtSignature` that must come back, unchanged and on the same part, when
the client replays the history. OpenAI clients echo only the id, and the worker keeps no
state between requests, so both travel inside the id (the scheme LiteLLM also uses):

    <base>[__thought__<signature>]

    base       Gemini's `functionCall.id` when it sent one (echoed back to Gemini as
               `functionCall.id` / `functionResponse.id`), otherwise `call_` + 24 hex
               digits, synthesised here and never sent to Gemini
    signature  the part's `thoughtSignature` in base64url without padding, so the whole
               id stays within [A-Za-z0-9_-] (portable to providers that restrict ids)

Pairing a tool result with its call then needs nothing but the id the client echoes.
"""

from __future__ import annotations

import re
import secrets

SIGNATURE_SEPARATOR = "__thought__"
_SYNTHETIC = re.compile(r"call_[0-9a-f]{24}")


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def encode_call_id(upstream_id: object, signature: object) -> str:
    """The OpenAI id for one Gemini `functionCall` part."""
    base = upstream_id if isinstance(upstream_id, str) and upstream_id else new_call_id()
    if isinstance(signature, str) and signature:
        packed = signature.replace("+", "-").replace("/", "_").rstrip("=")
        return f"{base}{SIGNATURE_SEPARATOR}{packed}"
    return base


def decode_call_id(call_id: str) -> tuple[str | None, str | None]:
    """(Gemini's own call id or None, thoughtSignature in standard base64 or None)."""
    base, sep, packed = call_id.partition(SIGNATURE_SEPARATOR)
    signature = None
    if sep and packed:
        standard = packed.replace("-", "+").replace("_", "/")
        signature = standard + "=" * (-len(standard) % 4)
    upstream_id = None if _SYNTHETIC.fullmatch(base) or not base else base
    return upstream_id, signature
