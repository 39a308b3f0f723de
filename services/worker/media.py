"""Fetching a client's image URL for a provider that only takes bytes, without SSRF.

A client's `image_url` is an address the worker will connect to from inside the
operator's network, so every hop is vetted before any connection is made:

    url ─► scheme http/https, no userinfo
        ─► resolve the host once (getaddrinfo, or an injected resolver)
        ─► every resolved address must pass `AddressPolicy` (strict by default:
           only globally routable unicast; never loopback, RFC 1918, CGNAT, link-local
           incl. cloud metadata, multicast, reserved, unspecified, or any IPv6 form of them)
        ─► connect to the vetted IP itself (Host header and TLS SNI/certificate check keep
           the original name), so a second DNS answer cannot rebind the connection
        ─► a redirect (at most `MAX_REDIRECTS`) starts the same checks over
        ─► 2xx only; body streamed and cut at `max_bytes`; must be an image by its
           magic bytes (PNG/JPEG/GIF/WEBP) or, failing that, its image/* content type

Every failure is the client's: an `ImageFetchError` (a `FinalProviderError`, HTTP 400),
so it reaches the client at once and is not retried on another provider.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import structlog
from yarl import URL

from shared.errors import FinalProviderError

log = structlog.get_logger("worker.media")

MAX_IMAGE_BYTES = 20 << 20
FETCH_TIMEOUT_S = 10.0
MAX_REDIRECTS = 3
_READ_CHUNK_BYTES = 64 << 10
_SNIFF_BYTES = 12
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "llm-gateway-media/1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""(host, port) -> IP address strings. The default is the system resolver (getaddrinfo)."""

# Cloud metadata services: refused even when private networks are allowed.
_METADATA = (
    ipaddress.ip_network("169.254.169.254/32"),  # AWS, GCP, Azure, OpenStack...
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS over IPv6
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud
)
_PRIVATE = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT (RFC 6598)
    ipaddress.ip_network("fc00::/7"),  # unique local (ULA)
    ipaddress.ip_network("fec0::/10"),  # deprecated site-local
)
# Special-purpose blocks some Python versions still call global.
_RESERVED = (
    ipaddress.ip_network("192.0.0.0/24"),
    ipaddress.ip_network("198.18.0.0/15"),
    ipaddress.ip_network("240.0.0.0/4"),
    ipaddress.ip_network("100::/64"),
    ipaddress.ip_network("2001::/23"),
    ipaddress.ip_network("2001:db8::/32"),
    ipaddress.ip_network("64:ff9b:1::/48"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class ImageFetchError(FinalProviderError):
    """An image URL the gateway will not or could not fetch: the client's to fix (400)."""

    default_code = "invalid_image_url"


def address_class(ip: IPAddress) -> str | None:
    """Why `ip` is not a public unicast address ("loopback", "private", ...), or None."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return address_class(embedded)
        if ip.teredo is not None or (
            ip in _IPV4_COMPATIBLE and not (ip.is_unspecified or ip.is_loopback)
        ):
            return "reserved"
    if any(ip in net for net in _METADATA):
        return "metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if any(ip in net for net in _PRIVATE):
        return "private"
    if ip.is_reserved or not ip.is_global or any(ip in net for net in _RESERVED):
        return "reserved"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form reaches: mapped, 6to4 or NAT64."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which resolved addresses the fetcher may connect to.

    :param allow_private: also allow loopback and private networks (RFC 1918, CGNAT, ULA):
        for operators whose images live on internal hosts (`MEDIA_ALLOW_PRIVATE_NETWORKS`).
        Link-local, metadata, multicast, reserved and unspecified stay refused.
    :param allowed_networks: exact networks to allow whatever their class (tests use this
        to reach one local server and nothing else).
    """

    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    def refusal(self, ip: IPAddress) -> str | None:
        """None if `ip` may be connected to, else the address class that forbids it."""
        if any(ip.version == net.version and ip in net for net in self.allowed_networks):
            return None
        kind = address_class(ip)
        if kind in ("loopback", "private") and self.allow_private:
            return None
        return kind


STRICT = AddressPolicy()


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


async def fetch_image(
    http: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int = MAX_IMAGE_BYTES,
    timeout_s: float = FETCH_TIMEOUT_S,
    policy: AddressPolicy = STRICT,
    resolve: Resolver = system_resolve,
) -> tuple[str, bytes]:
    """Download an image for a provider: (mime type, bytes). Raises `ImageFetchError`.

    :param http: the worker's shared session (redirects are followed here, not by aiohttp).
    :param max_bytes: the largest body accepted, after any content decoding.
    :param timeout_s: the bound on the whole fetch, redirects included.
    :param policy: which addresses may be reached; strict unless the operator says otherwise.
    :param resolve: host resolution, injectable for tests.
    """
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            mime, data = await _fetch(http, _parse(url), max_bytes, policy, resolve)
    except TimeoutError as exc:
        raise ImageFetchError(f"Fetching the image URL timed out after {timeout_s:g}s.") from exc
    log.info(
        "image_fetched",
        bytes=len(data),
        mime=mime,
        latency_ms=int((time.monotonic() - started) * 1000),
    )
    return mime, data


@dataclass(frozen=True, slots=True)
class MediaFetcher:
    """`fetch_image` bound to the worker's session and the operator's policy.

    What an adapter's `prepare` hook receives, so adapters stay free of settings.
    """

    http: aiohttp.ClientSession
    policy: AddressPolicy = field(default=STRICT)
    max_bytes: int = MAX_IMAGE_BYTES
    timeout_s: float = FETCH_TIMEOUT_S

    async def fetch_image(self, url: str, *, max_bytes: int | None = None) -> tuple[str, bytes]:
        limit = self.max_bytes if max_bytes is None else min(max_bytes, self.max_bytes)
        return await fetch_image(
            self.http, url, max_bytes=limit, timeout_s=self.timeout_s, policy=self.policy
        )


def _parse(raw: str) -> URL:
    try:
        url = URL(raw)
    except (ValueError, TypeError) as exc:
        raise ImageFetchError("The image URL is not a valid URL.") from exc
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise ImageFetchError("The image URL must be an absolute http(s) URL.")
    if url.raw_user is not None or url.raw_password is not None:
        raise ImageFetchError("Credentials in image URLs are not supported.")
    return url


async def _vetted_addresses(url: URL, policy: AddressPolicy, resolve: Resolver) -> list[IPAddress]:
    host = url.raw_host or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        raw_addresses = await resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise ImageFetchError("The image URL's host could not be resolved.") from exc
    addresses: list[IPAddress] = []
    for raw in raw_addresses:
        try:
            ip = ipaddress.ip_address(raw.split("%", 1)[0])  # drop an IPv6 zone id
        except ValueError as exc:
            raise ImageFetchError("The image URL's host resolved to an invalid address.") from exc
        # One forbidden answer refuses the host: a name that mixes public and internal
        # records is exactly what a rebinding attacker would publish.
        reason = policy.refusal(ip)
        if reason is not None:
            log.info("image_url_refused", reason=reason)
            raise ImageFetchError(
                f"The image URL points to a forbidden address ({reason}).",
                code="image_url_forbidden",
            )
        addresses.append(ip)
    if not addresses:
        raise ImageFetchError("The image URL's host could not be resolved.")
    return addresses


def _pinned(url: URL, ip: IPAddress) -> URL:
    """The same URL with its host replaced by a vetted address."""
    host = f"[{ip.compressed}]" if ip.version == 6 else ip.compressed
    return URL.build(
        scheme=url.scheme,
        host=host,
        port=url.explicit_port,
        path=url.raw_path,
        query_string=url.raw_query_string,
        encoded=True,
    )


def _host_header(url: URL) -> str:
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    return host if url.explicit_port is None else f"{host}:{url.explicit_port}"


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _fetch(
    http: aiohttp.ClientSession,
    url: URL,
    max_bytes: int,
    policy: AddressPolicy,
    resolve: Resolver,
) -> tuple[str, bytes]:
    for _hop in range(MAX_REDIRECTS + 1):
        addresses = await _vetted_addresses(url, policy, resolve)
        result = await _get(http, url, addresses, max_bytes)
        if isinstance(result, URL):
            url = result
            continue
        return result
    raise ImageFetchError(f"The image URL redirected more than {MAX_REDIRECTS} times.")


async def _get(
    http: aiohttp.ClientSession, url: URL, addresses: list[IPAddress], max_bytes: int
) -> tuple[str, bytes] | URL:
    """One hop: the image, or the next URL to try when redirected."""
    host = url.raw_host or ""
    headers = {"Host": _host_header(url), "Accept": "image/*", "User-Agent": _USER_AGENT}
    # SNI and the certificate check use the name the client gave, not the pinned IP.
    server_hostname = host if url.scheme == "https" and not _is_ip_literal(host) else None
    last_error: aiohttp.ClientError | None = None
    for ip in addresses:
        try:
            async with http.get(
                _pinned(url, ip),
                headers=headers,
                allow_redirects=False,
                server_hostname=server_hostname,
            ) as resp:
                if resp.status in _REDIRECT_STATUSES:
                    location = resp.headers.get("Location")
                    if not location:
                        raise ImageFetchError("The image URL redirected without a location.")
                    try:
                        return _parse(str(url.join(URL(location))))
                    except ValueError as exc:
                        raise ImageFetchError(
                            "The image URL redirected to an invalid URL."
                        ) from exc
                if not 200 <= resp.status < 300:
                    raise ImageFetchError(f"The image URL returned HTTP {resp.status}.")
                return await _read_image(resp, max_bytes)
        except aiohttp.ClientConnectorError as exc:
            last_error = exc  # try the host's next address
        except aiohttp.ClientError as exc:
            raise ImageFetchError(
                f"The image URL could not be fetched ({type(exc).__name__})."
            ) from exc
    raise ImageFetchError(
        f"The image URL could not be fetched ({type(last_error).__name__})."
    ) from last_error


async def _read_image(resp: aiohttp.ClientResponse, max_bytes: int) -> tuple[str, bytes]:
    too_large = ImageFetchError(
        f"The image is too large (over {max_bytes} bytes).", code="image_too_large"
    )
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise too_large
    declared = resp.content_type.lower() if resp.content_type else ""
    parts: list[bytes] = []
    size = 0
    checked = False
    async for chunk in resp.content.iter_chunked(_READ_CHUNK_BYTES):
        parts.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        if not checked and size >= _SNIFF_BYTES:
            checked = True
            _image_type(b"".join(parts)[:_SNIFF_BYTES], declared)  # fail before reading on
    data = b"".join(parts)
    return _image_type(data[:_SNIFF_BYTES], declared), data


def _image_type(head: bytes, declared: str) -> str:
    sniffed = sniff_image_type(head)
    if sniffed is not None:
        return sniffed
    if declared.startswith("image/"):
        return declared
    raise ImageFetchError("The image URL did not return an image.", code="invalid_image_format")


def sniff_image_type(head: bytes) -> str | None:
    """The image type named by a file's first bytes (PNG, JPEG, GIF, WEBP), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None
