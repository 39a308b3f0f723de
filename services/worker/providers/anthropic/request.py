"""OpenAI chat request -> Anthropic Messages request (wire-formats doc §2.1-§2.3, §5.3).

Built strictly: only fields Anthropic documents are sent. OpenAI parameters with no
Anthropic meaning are dropped (§5.3: seed, logprobs, penalties, ...); the ones whose loss
would change the answer the client asked for (n > 1, temperature above 1, tool arguments
that are not JSON, content Anthropic cannot read) are refused with a 400 that names the
parameter, before any call is made. Messages are translated in messages.py, tools and
JSON mode in tools.py; this module assembles the body and the scalar parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from services.worker.providers.anthropic.errors import invalid, unsupported
from services.worker.providers.anthropic.messages import translate_messages
from services.worker.providers.anthropic.tools import translate_tools
from services.worker.providers.base import ChatRequest, HttpCall, Target
from shared.catalog import Offer
from shared.errors import FinalProviderError

ANTHROPIC_VERSION = "2023-06-01"


def build_request(req: ChatRequest, target: Target) -> HttpCall:
    """The HTTP call for `POST {base_url}/messages`; raises a 400 `FinalProviderError`
    for a request Anthropic cannot honour."""
    client_body = req.body
    if target.provider.drop_params:
        # The operator's catalog may drop fields, e.g. temperature/top_p for models that
        # refuse sampling parameters; they are removed before translation.
        drop = target.provider.drop_params
        client_body = {k: v for k, v in client_body.items() if k not in drop}
    try:
        body = translate_body(client_body, target.offer, stream=req.stream)
    except FinalProviderError as exc:
        exc.provider = target.name
        raise
    headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
    if target.api_key:
        headers["x-api-key"] = target.api_key
    return HttpCall(
        method="POST",
        url=f"{target.base_url.rstrip('/')}/messages",
        headers=headers,
        body=orjson.dumps(body),
    )


def translate_body(body: Mapping[str, Any], offer: Offer, *, stream: bool) -> dict[str, Any]:
    """The Anthropic request body for an OpenAI chat request body."""
    _refuse_unsupported(body)
    system, messages = translate_messages(body.get("messages"))
    out: dict[str, Any] = {
        "model": offer.upstream_model,
        "max_tokens": _max_tokens(body, offer),
        "messages": messages,
    }
    if system:
        out["system"] = system
    _sampling(body, out)
    stop = _stop_sequences(body.get("stop"))
    if stop:
        out["stop_sequences"] = stop
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    tools, tool_choice = translate_tools(body, messages)
    if tools:
        out["tools"] = tools
        if tool_choice is not None:
            out["tool_choice"] = tool_choice
    if stream:
        out["stream"] = True
    return out


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise unsupported("n", "only one choice can be generated per request.")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise unsupported(legacy, "use 'tools' and 'tool_choice' instead.")


# -- scalar parameters --------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _max_tokens(body: Mapping[str, Any], offer: Offer) -> int:
    # Anthropic requires max_tokens; without the client's, the model's own output limit
    # from the catalog is the one that truncates nothing.
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid(f"'{name}' must be a positive integer.", name)
        return value
    return offer.max_output_tokens


def _sampling(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    temperature = body.get("temperature")
    if temperature is not None:
        if not _is_number(temperature) or not 0 <= temperature <= 1:
            # OpenAI allows up to 2; clamping would quietly change the sampling asked for.
            raise invalid(
                "'temperature' must be between 0 and 1 for Anthropic models.", "temperature"
            )
        out["temperature"] = temperature
    top_p = body.get("top_p")
    if top_p is not None:
        if not _is_number(top_p) or not 0 <= top_p <= 1:
            raise invalid("'top_p' must be between 0 and 1.", "top_p")
        # Recent Claude models refuse a request that sets both (§2.2); the temperature is
        # the setting clients mean, top_p usually rides along at its default.
        if temperature is None:
            out["top_p"] = top_p


def _stop_sequences(stop: object) -> list[str]:
    if stop is None:
        return []
    sequences = [stop] if isinstance(stop, str) else stop
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        raise invalid("'stop' must be a string or an array of strings.", "stop")
    for sequence in sequences:
        if not sequence.strip():
            raise invalid(
                "Anthropic models reject stop sequences that are empty or only whitespace.",
                "stop",
            )
    return list(sequences)
