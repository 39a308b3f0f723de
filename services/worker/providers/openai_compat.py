"""The OpenAI wire format, for OpenAI itself and every provider that copies it.

An OpenAI-compatible provider is configuration over this one adapter: its name and the
request fields it rejects (`drop_params`). What differs between them on the way back
(Together's `eos` finish reason, numeric logprobs, usage on the last content chunk) is
normalised here, so the worker only ever sees OpenAI-valid choices.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from services.worker.providers.base import (
    ChatRequest,
    Completion,
    HttpCall,
    SseEvent,
    StreamDelta,
    Target,
    load_json_object,
)
from shared.errors import FinalProviderError, ProviderError, RetryableProviderError
from shared.messages import Usage

# Fields the gateway's own API accepts for routing; no upstream knows them.
GATEWAY_FIELDS = frozenset({"provider", "models", "route"})

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
_FINISH_ALIASES = {"eos": "stop", "max_tokens": "length", "tool_use": "tool_calls"}

# Hints above this are ignored by the OpenAI SDK; we cap rather than ignore, so a
# candidate that asked for a long pause is at least skipped for a while.
MAX_RETRY_AFTER_S = 120.0

_RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})
_CLIENT_STATUSES = frozenset({400, 404, 413, 422})
_DONE = b"[DONE]"


def normalise_finish_reason(value: object) -> str:
    """Map any upstream finish reason onto OpenAI's enum (unknown values end as `stop`)."""
    if isinstance(value, str):
        if value in FINISH_REASONS:
            return value
        return _FINISH_ALIASES.get(value, "stop")
    return "stop"


@dataclass(frozen=True, slots=True)
class OpenAICompatible:
    name: str
    drop_params: frozenset[str] = frozenset()
    # Some compatible servers (Together) accept `stop` only as a list.
    stop_as_list: bool = False
    _always_drop: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_always_drop", self.drop_params | GATEWAY_FIELDS)

    # -- request ---------------------------------------------------------------------

    def build_request(self, req: ChatRequest, target: Target) -> HttpCall:
        drop = self._always_drop | target.provider.drop_params
        body = {k: v for k, v in req.body.items() if k not in drop}
        body["model"] = target.offer.upstream_model
        if req.stream:
            body["stream"] = True
            # The gateway bills from upstream usage, so it asks for it whatever the client
            # asked; the worker strips the usage chunk when the client did not want it.
            options = body.get("stream_options")
            extra = options if isinstance(options, dict) else {}
            body["stream_options"] = {**extra, "include_usage": True}
        else:
            body.pop("stream_options", None)  # only valid together with stream: true
        if self.stop_as_list and isinstance(body.get("stop"), str):
            body["stop"] = [body["stop"]]
        headers = {"Content-Type": "application/json"}
        if target.api_key:
            headers["Authorization"] = f"Bearer {target.api_key}"
        return HttpCall(
            method="POST",
            url=f"{target.base_url.rstrip('/')}/chat/completions",
            headers=headers,
            body=orjson.dumps(body),
        )

    # -- non-streaming response ------------------------------------------------------

    def parse_response(self, body: bytes) -> Completion:
        data = load_json_object(body, self.name)
        if isinstance(data.get("error"), (dict, str)):
            raise _error_event(data, self.name)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise RetryableProviderError(
                f"{self.name} returned a response without choices", code="bad_response"
            )
        extra = {
            k: data[k] for k in ("system_fingerprint", "service_tier") if data.get(k) is not None
        }
        return Completion(
            choices=[_normalise_choice(c, i) for i, c in enumerate(choices)],
            usage=Usage.from_openai(_dict_or_none(data.get("usage"))),
            extra=extra,
        )

    # -- streaming -------------------------------------------------------------------

    def stream_parser(self) -> OpenAIStreamParser:
        return OpenAIStreamParser(self.name)

    # -- errors ----------------------------------------------------------------------

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, provider: str
    ) -> ProviderError:
        return classify_openai_error(status, headers, body, provider)


class OpenAIStreamParser:
    """One upstream stream: `chat.completion.chunk` events up to `data: [DONE]`."""

    __slots__ = ("_open_choices", "_provider", "done", "saw_finish_reason", "saw_usage")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._open_choices: set[int] = set()
        self.done = False
        self.saw_usage = False
        # True once at least one choice was seen and every seen choice has finished. A
        # body that ends after this, even without [DONE], ended normally.
        self.saw_finish_reason = False

    @property
    def finished(self) -> bool:
        return self.done

    def feed(self, event: SseEvent) -> list[StreamDelta]:
        data = event.data
        if data == _DONE:
            self.done = True
            return []
        if not data.strip():
            return []  # an empty keep-alive event
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise RetryableProviderError(
                f"{self._provider} sent a malformed stream event", code="bad_response"
            ) from exc
        if not isinstance(chunk, dict):
            raise RetryableProviderError(
                f"{self._provider} sent a stream event that is not an object", code="bad_response"
            )
        if event.event == "error" or chunk.get("error") is not None:
            raise _error_event(chunk, self._provider)
        raw_choices = chunk.get("choices") or ()
        choices = [_normalise_chunk_choice(c, i) for i, c in enumerate(raw_choices)]
        for choice in choices:
            index = choice["index"]
            if choice["finish_reason"] is None:
                self._open_choices.add(index)
                self.saw_finish_reason = False
            else:
                self._open_choices.discard(index)
                self.saw_finish_reason = not self._open_choices
        usage = Usage.from_openai(_dict_or_none(chunk.get("usage")))
        if usage is not None:
            self.saw_usage = True
        if not choices and usage is None:
            return []
        return [StreamDelta(choices=choices, usage=usage)]


# -- helpers -----------------------------------------------------------------------------


def _dict_or_none(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _openai_logprobs(value: object) -> object:
    # Together sends numbers or {tokens, token_logprobs}; OpenAI clients reject both.
    if isinstance(value, dict) and ("content" in value or "refusal" in value):
        return value
    return None


def _normalise_choice(raw: object, position: int) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RetryableProviderError("upstream returned a malformed choice", code="bad_response")
    message = raw.get("message")
    message = dict(message) if isinstance(message, dict) else {}
    message["role"] = "assistant"
    message.setdefault("content", None)
    message.setdefault("refusal", None)
    return {
        "index": raw.get("index", position),
        "message": message,
        "logprobs": _openai_logprobs(raw.get("logprobs")),
        "finish_reason": normalise_finish_reason(raw.get("finish_reason")),
    }


def _normalise_chunk_choice(raw: object, position: int) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RetryableProviderError("upstream sent a malformed chunk choice", code="bad_response")
    # The decoded chunk is ours alone: normalise in place, no copy on the hot path.
    raw.setdefault("index", position)
    if not isinstance(raw.get("delta"), dict):
        raw["delta"] = {}
    reason = raw.get("finish_reason")
    if reason is not None and reason not in FINISH_REASONS:
        raw["finish_reason"] = normalise_finish_reason(reason)
    elif "finish_reason" not in raw:
        raw["finish_reason"] = None
    logprobs = raw.get("logprobs")
    if logprobs is not None:
        raw["logprobs"] = _openai_logprobs(logprobs)
    return raw


def _error_fields(data: Mapping[str, Any]) -> tuple[str | None, str | None, str | None, str | None]:
    """(message, type, param, code) from an OpenAI-style error envelope, if there is one."""
    err = data.get("error")
    if isinstance(err, str):
        return err, None, None, None
    if not isinstance(err, dict):
        message = data.get("message")
        return (message if isinstance(message, str) else None), None, None, None

    def text(key: str) -> str | None:
        value = err.get(key)
        return str(value) if value is not None and value != "" else None

    return text("message"), text("type"), text("param"), text("code")


def _error_event(data: Mapping[str, Any], provider: str) -> RetryableProviderError:
    message, err_type, _param, code = _error_fields(data)
    return RetryableProviderError(
        message or f"{provider} reported an error mid-stream",
        code=code or err_type or "upstream_error",
        provider=provider,
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    for key, val in headers.items():  # plain dicts are not case-insensitive
        if key.lower() == name:
            return val
    return None


def parse_retry_after(headers: Mapping[str, str], *, now_s: float | None = None) -> float | None:
    """The upstream's wait hint in seconds: `retry-after-ms`, then `retry-after` (seconds or
    HTTP date), capped at `MAX_RETRY_AFTER_S`; None when absent or unreadable."""
    raw_ms = _header(headers, "retry-after-ms")
    if raw_ms is not None:
        try:
            return _cap(float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    try:
        return _cap(float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return _cap(when.timestamp() - (time.time() if now_s is None else now_s))


def _cap(seconds: float) -> float | None:
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def classify_openai_error(
    status: int, headers: Mapping[str, str], body: bytes, provider: str
) -> ProviderError:
    """Map an upstream HTTP error (OpenAI envelope, or anything else) into the error tree."""
    data: Any = None
    if body:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None  # a CDN or proxy page: classify by status alone
    message, err_type, param, code = _error_fields(data) if isinstance(data, dict) else (None,) * 4
    common: dict[str, Any] = {"provider": provider, "upstream_status": status}

    if (status == 429 and "insufficient_quota" in (code, err_type)) or status == 402:
        # The gateway's own upstream account is out of credit: not the client's doing, and
        # retrying the same account will not help.
        return FinalProviderError(
            f"{provider}: the gateway's upstream quota is exhausted",
            status=503,
            error_type="insufficient_quota",
            code="insufficient_quota",
            **common,
        )
    if status in (401, 403):
        # The operator's key is wrong. Never echo the upstream text: it can quote the key.
        return FinalProviderError(
            f"{provider} rejected the gateway's credentials (HTTP {status})",
            status=502,
            error_type="server_error",
            code="upstream_auth_error",
            **common,
        )

    should_retry = (_header(headers, "x-should-retry") or "").strip().lower()
    retryable = status in _RETRYABLE_STATUSES or status >= 500
    if should_retry == "true":
        retryable = True
    elif should_retry == "false":
        retryable = False

    if retryable:
        retry_after = parse_retry_after(headers)
        gateway_status, gateway_type, default_code = _retryable_shape(status)
        extra_headers = (
            {"retry-after": str(math.ceil(retry_after))}
            if retry_after is not None and gateway_status in (429, 503)
            else None
        )
        return RetryableProviderError(
            message or f"{provider} returned HTTP {status}",
            status=gateway_status,
            error_type=gateway_type,
            code=code or default_code,
            retry_after_s=retry_after,
            headers=extra_headers,
            **common,
        )
    if status in _CLIENT_STATUSES:
        return FinalProviderError(
            message or f"{provider} rejected the request (HTTP {status})",
            status=status,
            error_type=err_type or "invalid_request_error",
            param=param,
            code="model_not_found" if status == 404 else code,
            **common,
        )
    # Any other refusal (405, 410, an upstream told not to retry a 5xx...) is no fault of
    # the client's request, and another attempt on this provider will not help.
    return FinalProviderError(
        message or f"{provider} returned HTTP {status}",
        status=502,
        error_type="server_error",
        code=code or "upstream_error",
        **common,
    )


def _retryable_shape(status: int) -> tuple[int, str, str]:
    """(gateway status, OpenAI type, default code) should this be the last error."""
    if status == 429:
        return 429, "requests", "rate_limit_exceeded"
    if status in (408, 504, 524):
        return 504, "server_error", "timeout"
    if status in (503, 529):
        return 503, "server_error", "overloaded"
    return 502, "server_error", "upstream_error"
