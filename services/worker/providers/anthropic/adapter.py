"""The Anthropic Messages adapter: the four translations behind `ProviderAdapter`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.worker.providers.anthropic.errors import classify_error
from services.worker.providers.anthropic.request import build_request
from services.worker.providers.anthropic.response import parse_response
from services.worker.providers.anthropic.stream import AnthropicStreamParser
from services.worker.providers.base import ChatRequest, Completion, HttpCall, Target
from shared.errors import ProviderError


@dataclass(frozen=True, slots=True)
class AnthropicAdapter:
    """Anthropic's `POST /v1/messages`, for Anthropic itself or any host that copies it."""

    name: str = "anthropic"

    def build_request(self, req: ChatRequest, target: Target) -> HttpCall:
        return build_request(req, target)

    def parse_response(self, body: bytes) -> Completion:
        return parse_response(body, self.name)

    def stream_parser(self) -> AnthropicStreamParser:
        return AnthropicStreamParser(self.name)

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, provider: str
    ) -> ProviderError:
        return classify_error(status, headers, body, provider)
