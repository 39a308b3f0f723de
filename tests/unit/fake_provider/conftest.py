"""Fixtures for the fake provider's tests: servers of the test's own and raw HTTP helpers.

start(**config)   a TestServer running `create_app(FakeConfig(**config))`
server            one with the default config (auth required, 8 chunks)
http              an aiohttp ClientSession
sse_events(raw, sep)  the `data:`/`event:` blocks of an SSE body
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from services.fake_provider.app import FakeConfig, create_app

Start = Callable[..., Awaitable[TestServer]]

WEATHER_TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "unit": {"type": "string"},
    },
    "required": ["city", "days"],
}
TIME_TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"zone": {"type": "string"}, "precise": {"type": "boolean"}},
}
WEATHER_ARGS = {"city": "Paris", "days": 1}
TIME_ARGS = {"zone": "Paris"}
PNG_B64 = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[TestServer] = []

    async def _start(**config: Any) -> TestServer:
        server = TestServer(create_app(FakeConfig(**config)))
        await server.start_server()
        servers.append(server)
        return server

    yield _start
    for server in servers:
        await server.close()


@pytest.fixture
async def server(start: Start) -> TestServer:
    return await start()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def sse_blocks(raw: bytes, sep: bytes = b"\n\n") -> list[bytes]:
    """The events of a complete SSE body, each without its separator."""
    assert raw.endswith(sep), raw[-80:]
    return raw[: -len(sep)].split(sep)


async def read_cut_stream(resp: aiohttp.ClientResponse) -> bytes:
    """The bytes of a stream the server cuts; asserts that it was cut."""
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async for part in resp.content.iter_any():
            received += part
    return received


async def calls(http: aiohttp.ClientSession, server: TestServer) -> list[dict[str, Any]]:
    async with http.get(server.make_url("/_fake/calls")) as resp:
        result: list[dict[str, Any]] = await resp.json()
    return result
