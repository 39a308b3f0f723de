"""Custom providers written by users, loaded from the catalog by dotted path.

Extend `BaseProvider` and override what your upstream does differently; the defaults
speak the OpenAI wire format. Reference it from the catalog:

    providers:
      acme:
        adapter: my_providers.AcmeProvider   # module importable, or beside the catalog file
        base_url: https://api.acme.example/v1
        key_env: API_KEY_ACME

The worker does the I/O (pooled connections, timeouts, retries, fallback, billing);
your class only translates.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from services.worker.providers.base import (
    ChatRequest,
    Completion,
    HttpCall,
    ProviderAdapter,
    SseEvent,
    StreamDelta,
    Target,
)
from services.worker.providers.openai_compat import (
    GATEWAY_FIELDS,
    classify_openai_error,
    normalise_finish_reason,
)
from shared.errors import ProviderError, RetryableProviderError
from shared.messages import Usage


class CustomProviderError(ValueError):
    """A catalog `adapter` path could not be loaded."""


class BaseProvider:
    """Base class for a provider added by code. Override the `transform_*` methods."""

    #: path appended to the provider's base URL
    path = "/chat/completions"

    def headers(self, target: Target) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if target.api_key:
            headers["Authorization"] = f"Bearer {target.api_key}"
        return headers

    def transform_request(self, body: dict[str, Any], target: Target, *, stream: bool) -> dict[str, Any]:
        """OpenAI request body in, upstream body out. `model` is already the upstream id."""
        return body

    def transform_response(self, data: dict[str, Any]) -> dict[str, Any]:
        """Upstream JSON answer in, an OpenAI `chat.completion` object out."""
        return data

    def transform_stream_event(self, event: str, data: dict[str, Any]) -> dict[str, Any] | None:
        """One upstream SSE event in, an OpenAI `chat.completion.chunk` out (None to skip)."""
        return data

    def is_stream_end(self, event: SseEvent) -> bool:
        return event.data.strip() == b"[DONE]"

    # --- the ProviderAdapter protocol, built on the transforms above ---

    def build_request(self, req: ChatRequest, target: Target) -> HttpCall:
        body = {k: v for k, v in req.body.items() if k not in GATEWAY_FIELDS}
        body["model"] = target.offer.upstream_model
        for name in target.provider.drop_params:
            body.pop(name, None)
        body = self.transform_request(body, target, stream=req.stream)
        return HttpCall(
            method="POST",
            url=target.base_url + self.path,
            headers=self.headers(target),
            body=orjson.dumps(body),
        )

    def parse_response(self, body: bytes) -> Completion:
        try:
            data = self.transform_response(orjson.loads(body))
            choices = [_normalise(c) for c in data["choices"]]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise RetryableProviderError(f"unreadable answer from custom provider: {exc}") from exc
        return Completion(choices=choices, usage=Usage.from_openai(data.get("usage")))

    def stream_parser(self) -> _CustomStreamParser:
        return _CustomStreamParser(self)

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, provider: str
    ) -> ProviderError:
        return classify_openai_error(status, headers, body, provider)


class _CustomStreamParser:
    def __init__(self, provider: BaseProvider) -> None:
        self._provider = provider
        self.finished = False
        self.saw_finish_reason = False

    def feed(self, event: SseEvent) -> list[StreamDelta]:
        if self._provider.is_stream_end(event):
            self.finished = True
            return []
        try:
            chunk = self._provider.transform_stream_event(event.event, orjson.loads(event.data))
        except orjson.JSONDecodeError as exc:
            raise RetryableProviderError(f"unreadable stream event: {exc}") from exc
        if chunk is None:
            return []
        if "error" in chunk:
            raise RetryableProviderError(str((chunk["error"] or {}).get("message", "stream error")))
        choices = [_normalise(c) for c in chunk.get("choices") or ()]
        if any(c.get("finish_reason") for c in choices):
            self.saw_finish_reason = True
        return [StreamDelta(choices=choices, usage=Usage.from_openai(chunk.get("usage")))]


def _normalise(choice: dict[str, Any]) -> dict[str, Any]:
    if choice.get("finish_reason") is not None:
        choice = {**choice, "finish_reason": normalise_finish_reason(choice["finish_reason"])}
    return choice


def load_adapter(path: str, *, search_dir: Path | None = None) -> ProviderAdapter:
    """Instantiate `package.module.ClassName`; `search_dir` (the catalog's folder) is importable."""
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise CustomProviderError(f"adapter {path!r} is neither built in nor a dotted path")
    if search_dir is not None and str(search_dir) not in sys.path:
        sys.path.append(str(search_dir))
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise CustomProviderError(f"cannot load adapter {path!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, BaseProvider)):
        raise CustomProviderError(f"adapter {path!r} must be a subclass of BaseProvider")
    return cls()
