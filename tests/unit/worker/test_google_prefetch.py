"""The Gemini adapter's `prepare` hook: image URLs fetched (safely) and sent as inlineData."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.worker.media import AddressPolicy, ImageFetchError, MediaFetcher
from services.worker.providers import REGISTRY
from services.worker.providers.base import ChatRequest, Target
from services.worker.providers.google import prefetch
from shared.catalog import Offer, ProviderConfig
from shared.money import Price
from tests.oracles_gemini import validate_gemini_request

ADAPTER = REGISTRY["google"]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x07" * 40
JPEG = b"\xff\xd8\xff\xe0" + b"\x01" * 40
TARGET = Target(
    model_id="gemini-2.5-flash",
    provider=ProviderConfig(name="google", adapter="google", base_url="https://g.example/v1beta"),
    offer=Offer(
        provider="google", upstream_model="gemini-2.5-flash", price=Price(Decimal(1), Decimal(1))
    ),
    api_key="k",
    base_url="https://g.example/v1beta",
)


@pytest.fixture
async def images() -> AsyncIterator[tuple[TestServer, list[str]]]:
    hits: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        hits.append(request.path)
        if request.path == "/a.png":
            return web.Response(body=PNG, content_type="image/png")
        if request.path == "/b.jpg":
            return web.Response(body=JPEG, content_type="image/jpeg")
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{name}", serve)
    server = TestServer(app, host="127.0.0.1")
    async with server:
        yield server, hits


@pytest.fixture
async def media() -> AsyncIterator[MediaFetcher]:
    local = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    async with aiohttp.ClientSession() as session:
        yield MediaFetcher(session, local)


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": "auto"}}


def request(*messages: dict[str, Any]) -> ChatRequest:
    return ChatRequest(
        body={"model": "gemini-2.5-flash", "messages": list(messages)},
        stream=False,
        include_usage=False,
    )


async def test_urls_become_inline_data(
    images: tuple[TestServer, list[str]], media: MediaFetcher
) -> None:
    server, hits = images
    inline = f"data:image/png;base64,{base64.b64encode(PNG).decode()}"
    req = request(
        {"role": "system", "content": "Look closely."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                image(str(server.make_url("/a.png"))),
                image(inline),
            ],
        },
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": [image(str(server.make_url("/b.jpg")))]},
    )
    prepared = await ADAPTER.prepare(req, media, TARGET)  # type: ignore[attr-defined]
    assert sorted(hits) == ["/a.png", "/b.jpg"]
    assert req.body["messages"][1]["content"][1]["image_url"]["url"].startswith("http")  # untouched
    body = orjson.loads(ADAPTER.build_request(prepared, TARGET).body)
    validate_gemini_request(body)
    assert body["contents"][0]["parts"][1:] == [
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(PNG).decode()}},
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(PNG).decode()}},
    ]
    assert body["contents"][2]["parts"] == [
        {"inlineData": {"mimeType": "image/jpeg", "data": base64.b64encode(JPEG).decode()}}
    ]


async def test_no_urls_no_io(media: MediaFetcher) -> None:
    req = request({"role": "user", "content": "Hi"})
    assert await ADAPTER.prepare(req, media, TARGET) is req  # type: ignore[attr-defined]


async def test_a_failure_names_the_part(
    images: tuple[TestServer, list[str]], media: MediaFetcher
) -> None:
    server, _ = images
    req = request(
        {"role": "user", "content": "first"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "x"},
                image(str(server.make_url("/a.png"))),
                image(str(server.make_url("/gone.png"))),
            ],
        },
    )
    with pytest.raises(ImageFetchError) as caught:
        await ADAPTER.prepare(req, media, TARGET)  # type: ignore[attr-defined]
    assert caught.value.http_status == 400
    assert caught.value.param == "messages[1].content[2].image_url.url"


async def test_strict_policy_refuses_the_local_host(images: tuple[TestServer, list[str]]) -> None:
    server, hits = images
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ImageFetchError) as caught:
            await ADAPTER.prepare(  # type: ignore[attr-defined]
                request({"role": "user", "content": [image(str(server.make_url("/a.png")))]}),
                MediaFetcher(session),
                TARGET,
            )
    assert caught.value.code == "image_url_forbidden"
    assert caught.value.param == "messages[0].content[0].image_url.url"
    assert hits == []


async def test_limits_per_request(
    images: tuple[TestServer, list[str]], media: MediaFetcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, hits = images
    url = str(server.make_url("/a.png"))
    too_many = request(
        {"role": "user", "content": [image(url)] * (prefetch.MAX_FETCHED_IMAGES + 1)}
    )
    with pytest.raises(ImageFetchError) as caught:
        await ADAPTER.prepare(too_many, media, TARGET)  # type: ignore[attr-defined]
    assert caught.value.param == f"messages[0].content[{prefetch.MAX_FETCHED_IMAGES}].image_url.url"
    assert hits == []
    monkeypatch.setattr(prefetch, "INLINE_BUDGET_BYTES", len(PNG) * 2 + 1)
    with pytest.raises(ImageFetchError) as caught:
        await ADAPTER.prepare(request({"role": "user", "content": [image(url)] * 3}), media, TARGET)  # type: ignore[attr-defined]
    assert caught.value.code == "image_too_large"
