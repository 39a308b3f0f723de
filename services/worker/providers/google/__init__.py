"""The Google Gemini adapter (Generative Language API, API key): wire-formats doc §3.

request.py   OpenAI request -> generateContent / streamGenerateContent body
response.py  GenerateContentResponse -> OpenAI choices, finish reasons, usage
stream.py    SSE events -> OpenAI chunk choices
errors.py    google.rpc.Status errors -> the gateway's error tree
ids.py       OpenAI tool-call ids that carry Gemini's call id and thought signature
prefetch.py  the `prepare` hook: http(s) image URLs fetched and inlined as bytes
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.worker.providers.base import (
    ChatRequest,
    Completion,
    HttpCall,
    MediaSource,
    Target,
)
from services.worker.providers.google.errors import classify_gemini_error
from services.worker.providers.google.prefetch import inline_image_urls
from services.worker.providers.google.request import build_request
from services.worker.providers.google.response import parse_response
from services.worker.providers.google.stream import GeminiStreamParser
from shared.errors import ProviderError

__all__ = ["GeminiStreamParser", "GoogleAdapter"]


@dataclass(frozen=True, slots=True)
class GoogleAdapter:
    name: str = "google"

    async def prepare(self, req: ChatRequest, media: MediaSource, target: Target) -> ChatRequest:
        return await inline_image_urls(req, media)

    def build_request(self, req: ChatRequest, target: Target) -> HttpCall:
        return build_request(req, target)

    def parse_response(self, body: bytes) -> Completion:
        return parse_response(body, self.name)

    def stream_parser(self) -> GeminiStreamParser:
        return GeminiStreamParser(self.name)

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, provider: str
    ) -> ProviderError:
        return classify_gemini_error(status, headers, body, provider)
