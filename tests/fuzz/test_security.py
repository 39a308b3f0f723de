"""Security checks through the running stack: the admin guard, JWT algorithm confusion,
image URLs that must never be fetched (SSRF), and a flood of bad keys."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets

import aiohttp
import jwt
import orjson
import pytest
from redis.asyncio import Redis

from services.api.app import create_app
from shared.redis import keys
from shared.settings import Settings
from tests.audit import wait_settled
from tests.fakes.jwks import claims
from tests.fuzz.conftest import (
    JWT_SECRET,
    FuzzEnv,
    count_inputs,
    ledger_rows_after,
    snapshot,
)
from tests.oracles import validate_openai

pytestmark = pytest.mark.timeout(120)
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def _call(
    method: str, url: str, *, headers: dict[str, str] | None = None, body: object = None
) -> tuple[int, bytes, str]:
    async with aiohttp.ClientSession() as http:
        data = orjson.dumps(body) if body is not None else None
        async with http.request(
            method, url, data=data, headers=headers or {}, allow_redirects=False
        ) as resp:
            return resp.status, await resp.read(), resp.content_type


async def _cancel_marks(redis_url: str) -> set[bytes]:
    redis = Redis.from_url(redis_url)
    try:
        return {key async for key in redis.scan_iter(match=keys.cancel_mark("*"))}
    finally:
        await redis.aclose()


def _admin_routes() -> list[tuple[str, str]]:
    """Every route the api registers under /admin/, with placeholders filled in."""
    app = create_app(Settings(), redis_url="redis://127.0.0.1:1/0")
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/admin/") and route.method != "HEAD":
            routes.add((route.method, re.sub(r"\{[^}]+\}", "usr_doesnotexist", path)))
    return sorted(routes)


ADMIN_ROUTES = _admin_routes()
# The dashboard's sign-in page and stylesheet are public by design; its other pages
# answer an anonymous visitor with a redirect to sign in, never with data.
PUBLIC_ADMIN = {"/admin/dashboard/login", "/admin/dashboard/dashboard.css"}


async def test_admin_api_refuses_without_the_token(fuzz_env: FuzzEnv) -> None:
    stack = fuzz_env.stack
    assert ADMIN_ROUTES, "no /admin/ route is registered"
    before = await snapshot(stack)
    refusals = {
        "none": {},
        "wrong token": {"Authorization": "Bearer not-the-admin-token"},
        "user's API key": {"Authorization": f"Bearer {fuzz_env.key}"},
        "token as X-API-Key": {"X-API-Key": stack.env["ADMIN_TOKEN"]},
        "basic scheme": {"Authorization": "Basic " + base64.b64encode(b"admin:x").decode()},
    }
    statuses = []
    for method, path in ADMIN_ROUTES:
        if path in PUBLIC_ADMIN:
            continue
        for label, headers in refusals.items():
            status, raw, content_type = await _call(
                method, stack.api_url + path, headers=headers, body={} if method == "POST" else None
            )
            statuses.append(status)
            if path.startswith("/admin/dashboard"):
                assert status in (302, 303, 401, 403), f"{method} {path} ({label}): {status}"
                continue
            assert status in (401, 403), f"{method} {path} ({label}): {status} {raw[:200]!r}"
            assert content_type == "application/json"
            validate_openai("ErrorResponse", orjson.loads(raw))
    count_inputs(statuses)
    # The positive control: the same guard lets the real token through.
    token = {"Authorization": f"Bearer {stack.env['ADMIN_TOKEN']}"}
    status, _raw, _ = await _call("GET", stack.api_url + "/admin/users", headers=token)
    assert status == 200
    assert await snapshot(stack) == before


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge_hs256(payload: dict[str, object], secret: bytes, kid: str | None) -> str:
    header: dict[str, object] = {"alg": "HS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


async def test_jwt_algorithm_confusion_is_refused(fuzz_env: FuzzEnv) -> None:
    """`none`, HS256 signed with the RSA public key (the classic confusion), an unknown
    kid, a foreign secret and an expired token are all 401; real tokens pass."""
    stack = fuzz_env.stack
    key = fuzz_env.signing_key
    body = claims(fuzz_env.issuer, sub="jwt-fuzz-user", email="fuzz@example.com")
    forged = {
        "alg none": jwt.encode(body, None, algorithm="none"),
        "alg none with kid": _b64(json.dumps({"alg": "none", "kid": key.kid}).encode())
        + "."
        + _b64(json.dumps(body).encode())
        + ".",
        "HS256 signed with the RSA public key": _forge_hs256(body, key.public_pem(), key.kid),
        "HS256 with the public key, no kid": _forge_hs256(body, key.public_pem(), None),
        "HS256 with a foreign secret": _forge_hs256(body, b"x" * 48, None),
        "RS256 with an unknown kid": key.mint(body, kid="not-a-kid"),
        "RS256 expired": key.mint(claims(fuzz_env.issuer, sub="jwt-fuzz-user", exp_in_s=-3600)),
        "RS256 wrong audience": key.mint(claims(fuzz_env.issuer, sub="x", aud="anon")),
        "RS256 wrong issuer": key.mint(claims("http://127.0.0.1:1/auth/v1", sub="x")),
        "HS512 with the real secret": jwt.encode(body, JWT_SECRET, algorithm="HS512"),
        "signature stripped": key.mint(body).rsplit(".", 1)[0] + ".",
    }
    before = await snapshot(stack)
    statuses = []
    for label, token in forged.items():
        for path, payload in (("/v1/chat/estimate", CHAT), ("/v1/chat/completions", CHAT)):
            status, raw, _ = await _call(
                "POST", stack.api_url + path, headers={"Authorization": f"Bearer {token}"}, body=payload
            )
            statuses.append(status)
            assert status == 401, f"{label} on {path}: {status} {raw[:200]!r}"
            validate_openai("ErrorResponse", orjson.loads(raw))
    count_inputs(statuses)
    assert await snapshot(stack) == before
    # Positive controls: the same path accepts genuine tokens of both kinds.
    for label, token in (
        ("RS256 from the JWKS", key.mint(body)),
        ("HS256 with the shared secret", jwt.encode(body, JWT_SECRET, algorithm="HS256")),
    ):
        status, raw, _ = await _call(
            "POST", stack.api_url + "/v1/chat/estimate",
            headers={"Authorization": f"Bearer {token}"}, body=CHAT,
        )  # fmt: skip
        assert status == 200, f"{label}: {status} {raw[:200]!r}"


async def test_image_urls_on_loopback_are_never_fetched(fuzz_env: FuzzEnv) -> None:
    """The Gemini adapter downloads image URLs (providers that need bytes): URLs naming
    this machine, in every spelling, are refused with a 4xx and never connected to.
    (Private, link-local and metadata ranges are refused by the same policy; they are
    covered by tests/unit/worker/test_media.py without sending traffic there.)"""
    stack = fuzz_env.stack
    port = fuzz_env.listener.port
    urls = [
        f"http://127.0.0.1:{port}/cat.png",
        f"http://localhost:{port}/cat.png",
        f"http://127.1:{port}/cat.png",
        f"http://2130706433:{port}/cat.png",
        f"http://0x7f000001:{port}/cat.png",
        f"http://0177.0.0.1:{port}/cat.png",
        f"http://0.0.0.0:{port}/cat.png",
        f"http://[::1]:{port}/cat.png",
        f"http://[::ffff:127.0.0.1]:{port}/cat.png",
        f"http://[::ffff:7f00:1]:{port}/cat.png",
        f"http://user:pass@127.0.0.1:{port}/cat.png",
        f"https://127.0.0.1:{port}/cat.png",
        f"http://127.0.0.1.:{port}/cat.png",
        f"http://LOCALHOST:{port}/cat.png",
    ]
    before = await snapshot(stack)
    marks_before = await _cancel_marks(stack.redis_url)
    statuses = []
    for url in urls:
        body = {
            "model": "gemini-1.5-pro",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ],
        }
        status, raw, _ = await _call(
            "POST", stack.api_url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {fuzz_env.key}"}, body=body,
        )  # fmt: skip
        statuses.append(status)
        assert 400 <= status < 500, f"{url}: {status} {raw[:300]!r}"
        validate_openai("ErrorResponse", orjson.loads(raw))
    count_inputs(statuses)
    await wait_settled(stack.redis_url, timeout_s=30)
    assert fuzz_env.listener.connections == [], "the gateway connected to a loopback image URL"
    # The worker refused these itself: the api has no job left to cancel.
    assert await _cancel_marks(stack.redis_url) - marks_before == set()
    after = await snapshot(stack)
    # The URL is checked by the worker (it resolves names), so a job ran and its usage
    # row records the refusal; but nothing was charged and no hold is left.
    assert after.ledger_rows == before.ledger_rows, (
        f"new ledger rows: {await ledger_rows_after(stack, before.ledger_rows)}"
    )
    assert after.holds == {}
    debits = await stack.query(
        "SELECT count(*) FROM usage_records WHERE cost_nusd > 0 AND model_requested = $1",
        "gemini-1.5-pro",
    )
    assert debits[0][0] == 0


async def test_bad_key_flood_never_reaches_the_queue(fuzz_env: FuzzEnv) -> None:
    stack = fuzz_env.stack
    before = await snapshot(stack)
    keys = [f"gw-{secrets.token_urlsafe(32)}" for _ in range(300)] + [
        secrets.token_hex(16) for _ in range(100)
    ] + ["", "gw-", "Bearer", "gw-" + "a" * 5000]
    sem = asyncio.Semaphore(40)
    statuses: list[int] = []

    async def one(http: aiohttp.ClientSession, key: str) -> None:
        async with sem, http.post(
            stack.api_url + "/v1/chat/completions",
            data=orjson.dumps(CHAT),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        ) as resp:
            statuses.append(resp.status)
            validate_openai("ErrorResponse", orjson.loads(await resp.read()))

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(one(http, key) for key in keys))
    count_inputs(statuses)
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    print(f"bad key flood: {len(statuses)} requests, statuses {counts}")
    assert set(statuses) <= {401, 429}
    assert await snapshot(stack) == before


IMAGE_DATA = [
    "data:image/png;base64,!!!not-base64!!!",
    "data:image/png;base64,",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "data:image/png,raw-bytes-without-base64",
    "data:image/png;base64,   ",
]


@pytest.mark.parametrize("model", ["gemini-1.5-pro", "gpt-4o-mini"])
async def test_invalid_image_data_is_refused_at_the_edge(fuzz_env: FuzzEnv, model: str) -> None:
    """Bytes no provider can decode as an image: a 400 before anything is queued."""
    stack = fuzz_env.stack
    before = await snapshot(stack)
    statuses = []
    for url in IMAGE_DATA:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
        }
        status, raw, _ = await _call(
            "POST", stack.api_url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {fuzz_env.key}"}, body=body,
        )  # fmt: skip
        statuses.append(status)
        assert status == 400, f"{url}: {status} {raw[:200]!r}"
        validate_openai("ErrorResponse", orjson.loads(raw))
    count_inputs(statuses)
    assert await snapshot(stack) == before
