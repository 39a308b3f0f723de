"""Safe image fetching: the SSRF guard, redirects, size, type and time limits.

Real local HTTP servers play the image hosts. Every refusal is checked to have made no
connection at all: the session's trace hooks count requests and connections, and the
servers count what reached them.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.worker.media import (
    AddressPolicy,
    ImageFetchError,
    MediaFetcher,
    address_class,
    fetch_image,
    sniff_image_type,
)
from shared.settings import Settings

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x01" * 64
LOCAL = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))


@dataclass
class Host:
    server: TestServer
    hits: list[web.Request] = field(default_factory=list)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


def image_app(hits: list[web.Request], other: list[str]) -> web.Application:
    async def record(request: web.Request) -> web.StreamResponse:
        hits.append(request)
        name = request.match_info["name"]
        if name == "img.png":
            return web.Response(body=PNG, content_type="image/png")
        if name == "unlabelled":
            return web.Response(body=PNG, content_type="application/octet-stream")
        if name == "photo.heic":
            return web.Response(
                body=b"\x00\x00\x00\x18ftypheic" + b"\x00" * 20, content_type="image/heic"
            )
        if name == "page":
            return web.Response(text="<html>" + "x" * 100 + "</html>", content_type="text/html")
        if name == "big":
            return web.Response(body=PNG + b"\x00" * 5000, content_type="image/png")
        if name == "big-chunked":
            resp = web.StreamResponse(headers={"Content-Type": "image/png"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(PNG)
            for _ in range(10):
                await resp.write(b"\x00" * 1000)
            await resp.write_eof()
            return resp
        if name == "slow":
            await asyncio.sleep(5)
            return web.Response(body=PNG, content_type="image/png")
        if name == "missing":
            return web.Response(status=404)
        if name == "to-img":
            raise web.HTTPFound("/img.png")
        if name == "to-other":
            raise web.HTTPFound(other[0])
        if name == "to-metadata":
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")
        if name == "loop":
            raise web.HTTPFound("/loop")
        return web.Response(status=500)

    app = web.Application()
    app.router.add_get("/{name}", record)
    return app


@pytest.fixture
async def hosts() -> AsyncIterator[tuple[Host, Host]]:
    """An image host on 127.0.0.1 and a second, 'internal' one on 127.0.0.2."""
    other_hits: list[web.Request] = []
    other = TestServer(image_app(other_hits, []), host="127.0.0.2")
    await other.start_server()
    main_hits: list[web.Request] = []
    main = TestServer(image_app(main_hits, [str(other.make_url("/img.png"))]), host="127.0.0.1")
    await main.start_server()
    try:
        yield Host(main, main_hits), Host(other, other_hits)
    finally:
        await main.close()
        await other.close()


@pytest.fixture
async def traced() -> AsyncIterator[tuple[aiohttp.ClientSession, SimpleNamespace]]:
    counts = SimpleNamespace(requests=0, connections=0)
    trace = aiohttp.TraceConfig()

    async def on_request(*_: object) -> None:
        counts.requests += 1

    async def on_connection(*_: object) -> None:
        counts.connections += 1

    trace.on_request_start.append(on_request)
    trace.on_connection_create_start.append(on_connection)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        yield session, counts


class FixedResolver:
    """Answers from a table, and remembers every lookup (to prove there is only one)."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self._answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        answer = self._answers[min(len(self.calls), len(self._answers)) - 1]
        return list(answer)


FORBIDDEN = [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "private"),
    ("169.254.169.254", "metadata"),
    ("169.254.1.1", "link_local"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.1", "reserved"),
    ("0.0.0.0", "unspecified"),
    ("255.255.255.255", "reserved"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("64:ff9b::a9fe:a9fe", "metadata"),
    ("2002:c0a8:101::1", "private"),
    ("fc00::1", "private"),
    ("fd00:ec2::254", "metadata"),
    ("fe80::1", "link_local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "reserved"),
    ("::127.0.0.1", "reserved"),
]


class TestAddressClasses:
    @pytest.mark.parametrize(("address", "kind"), FORBIDDEN)
    def test_forbidden_classes(self, address: str, kind: str) -> None:
        assert address_class(ipaddress.ip_address(address)) == kind

    @pytest.mark.parametrize(
        "address", ["8.8.8.8", "142.250.74.78", "2a00:1450:4007:80e::200e", "::ffff:8.8.8.8"]
    )
    def test_public_addresses(self, address: str) -> None:
        assert address_class(ipaddress.ip_address(address)) is None

    def test_allow_private_never_opens_metadata_or_link_local(self) -> None:
        policy = AddressPolicy(allow_private=True)
        assert policy.refusal(ipaddress.ip_address("127.0.0.1")) is None
        assert policy.refusal(ipaddress.ip_address("10.0.0.1")) is None
        assert policy.refusal(ipaddress.ip_address("fd12::1")) is None
        for address in ("169.254.169.254", "100.100.100.200", "fe80::1", "224.0.0.1", "0.0.0.0"):
            assert policy.refusal(ipaddress.ip_address(address)) is not None

    def test_sniffing(self) -> None:
        assert sniff_image_type(PNG) == "image/png"
        assert sniff_image_type(b"\xff\xd8\xff\xe0") == "image/jpeg"
        assert sniff_image_type(b"GIF89a") == "image/gif"
        assert sniff_image_type(b"RIFF\x10\x00\x00\x00WEBPVP8 ") == "image/webp"
        assert sniff_image_type(b"<svg") is None


class TestGuard:
    @pytest.mark.parametrize(("address", "kind"), FORBIDDEN)
    async def test_literal_addresses_are_refused_without_connecting(
        self,
        traced: tuple[aiohttp.ClientSession, SimpleNamespace],
        hosts: tuple[Host, Host],
        address: str,
        kind: str,
    ) -> None:
        session, counts = traced
        host = f"[{address}]" if ":" in address else address
        with pytest.raises(ImageFetchError) as caught:
            await fetch_image(session, f"http://{host}:{hosts[0].server.port}/img.png")
        assert caught.value.code == "image_url_forbidden" and caught.value.http_status == 400
        assert kind in caught.value.message
        assert counts.requests == counts.connections == 0
        assert hosts[0].hits == [] and hosts[1].hits == []

    async def test_names_are_judged_by_what_they_resolve_to(
        self, traced: tuple[aiohttp.ClientSession, SimpleNamespace], hosts: tuple[Host, Host]
    ) -> None:
        session, counts = traced
        port = hosts[0].server.port
        # The system resolver: localhost is loopback.
        with pytest.raises(ImageFetchError, match="loopback"):
            await fetch_image(session, f"http://localhost:{port}/img.png")
        # A public-looking name with an internal answer, or a mix of both.
        for answer in (["10.0.0.7"], ["93.184.216.34", "127.0.0.1"]):
            with pytest.raises(ImageFetchError, match="forbidden"):
                await fetch_image(
                    session, "http://images.example/x.png", resolve=FixedResolver(answer)
                )
        # A decimal spelling of 127.0.0.1 is still 127.0.0.1.
        with pytest.raises(ImageFetchError, match="loopback"):
            await fetch_image(session, f"http://2130706433:{port}/img.png")
        assert counts.requests == counts.connections == 0
        assert hosts[0].hits == []

    async def test_connects_to_the_vetted_address_with_the_original_host(
        self, traced: tuple[aiohttp.ClientSession, SimpleNamespace], hosts: tuple[Host, Host]
    ) -> None:
        session, _ = traced
        port = hosts[0].server.port
        # A rebinding resolver: a second lookup would answer with an internal address.
        resolver = FixedResolver(["127.0.0.1"], ["10.0.0.1"])
        mime, data = await fetch_image(
            session, f"http://img.test:{port}/img.png?size=2", policy=LOCAL, resolve=resolver
        )
        assert (mime, data) == ("image/png", PNG)
        assert resolver.calls == [("img.test", port)]
        [hit] = hosts[0].hits
        assert hit.headers["Host"] == f"img.test:{port}"
        assert hit.query_string == "size=2"

    async def test_redirects_are_vetted_hop_by_hop(
        self, traced: tuple[aiohttp.ClientSession, SimpleNamespace], hosts: tuple[Host, Host]
    ) -> None:
        session, _ = traced
        main, internal = hosts
        assert await fetch_image(session, main.url("/to-img"), policy=LOCAL) == ("image/png", PNG)
        with pytest.raises(ImageFetchError, match="loopback"):
            await fetch_image(session, main.url("/to-other"), policy=LOCAL)
        assert internal.hits == []  # 127.0.0.2 was never contacted
        with pytest.raises(ImageFetchError, match="metadata"):
            await fetch_image(session, main.url("/to-metadata"), policy=LOCAL)
        before = len(main.hits)
        with pytest.raises(ImageFetchError, match="redirected more than 3 times"):
            await fetch_image(session, main.url("/loop"), policy=LOCAL)
        assert len(main.hits) - before == 4  # the first request and three redirects

    async def test_only_http_and_no_credentials(
        self, traced: tuple[aiohttp.ClientSession, SimpleNamespace]
    ) -> None:
        session, counts = traced
        for url in (
            "ftp://example.com/a.png",
            "file:///etc/passwd",
            "http:///nohost",
            "https://user:pw@example.com/a.png",
        ):
            with pytest.raises(ImageFetchError):
                await fetch_image(session, url)
        assert counts.requests == 0


class TestBody:
    async def test_size_limit(self, hosts: tuple[Host, Host]) -> None:
        main, _ = hosts
        async with aiohttp.ClientSession() as session:
            for path in ("/big", "/big-chunked"):
                with pytest.raises(ImageFetchError) as caught:
                    await fetch_image(session, main.url(path), policy=LOCAL, max_bytes=2000)
                assert caught.value.code == "image_too_large"
                assert caught.value.http_status == 400
            mime, data = await fetch_image(
                session, main.url("/big"), policy=LOCAL, max_bytes=10_000
            )
            assert mime == "image/png" and len(data) == len(PNG) + 5000

    async def test_content_type(self, hosts: tuple[Host, Host]) -> None:
        main, _ = hosts
        async with aiohttp.ClientSession() as session:
            with pytest.raises(ImageFetchError) as caught:
                await fetch_image(session, main.url("/page"), policy=LOCAL)
            assert caught.value.code == "invalid_image_format"
            # Sniffed bytes win over a generic type; a declared image type is trusted.
            assert await fetch_image(session, main.url("/unlabelled"), policy=LOCAL) == (
                "image/png",
                PNG,
            )
            mime, _ = await fetch_image(session, main.url("/photo.heic"), policy=LOCAL)
            assert mime == "image/heic"

    async def test_http_errors_and_timeouts_are_client_errors(
        self, hosts: tuple[Host, Host]
    ) -> None:
        main, _ = hosts
        async with aiohttp.ClientSession() as session:
            with pytest.raises(ImageFetchError, match="HTTP 404") as caught:
                await fetch_image(session, main.url("/missing"), policy=LOCAL)
            assert caught.value.http_status == 400
            with pytest.raises(ImageFetchError, match="timed out") as caught:
                await fetch_image(session, main.url("/slow"), policy=LOCAL, timeout_s=0.2)
            assert caught.value.http_status == 400
            port = main.server.port
            await main.server.close()
            with pytest.raises(ImageFetchError, match="could not be fetched"):
                await fetch_image(session, f"http://127.0.0.1:{port}/img.png", policy=LOCAL)


class TestSettings:
    async def test_private_networks_are_off_unless_the_operator_says_so(
        self, hosts: tuple[Host, Host]
    ) -> None:
        assert Settings.from_env({}).media_allow_private_networks is False
        on = Settings.from_env({"MEDIA_ALLOW_PRIVATE_NETWORKS": "true"})
        assert on.media_allow_private_networks is True
        async with aiohttp.ClientSession() as session:
            strict = MediaFetcher(session)
            with pytest.raises(ImageFetchError, match="loopback"):
                await strict.fetch_image(hosts[0].url("/img.png"))
            relaxed = MediaFetcher(
                session, AddressPolicy(allow_private=on.media_allow_private_networks)
            )
            assert await relaxed.fetch_image(hosts[0].url("/img.png")) == ("image/png", PNG)
