"""The dashboard's sign-in flow and page, over HTTP (the browser test is in tests/e2e)."""

from __future__ import annotations

import re

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from fakeredis.aioredis import FakeRedis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api import admin_session
from shared.redis import keys
from tests.integration.stats.conftest import ADMIN, ADMIN_TOKEN
from tests.integration.stats.test_stats import seed

Client = TestClient[web.Request, web.Application]
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


async def test_without_a_session_the_page_sends_you_to_sign_in(api: Client) -> None:
    resp = await api.get("/admin/dashboard", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/dashboard/login"
    form = await api.get("/admin/dashboard/login")
    html = await form.text()
    assert form.status == 200 and 'type="password"' in html and 'method="post"' in html
    assert "script-src" not in form.headers["Content-Security-Policy"]  # no script at all
    assert "default-src 'none'" in form.headers["Content-Security-Policy"]
    assert form.headers["X-Frame-Options"] == "DENY"


async def test_a_wrong_token_is_refused_and_sets_nothing(api: Client) -> None:
    resp = await api.post("/admin/dashboard/login", data={"token": "guess"}, allow_redirects=False)
    assert resp.status == 401
    assert admin_session.COOKIE_NAME not in resp.cookies
    assert "not the admin token" in await resp.text()
    forged = {admin_session.COOKIE_NAME: admin_session.issue("some-other-token")}
    resp = await api.get("/admin/dashboard", cookies=forged, allow_redirects=False)
    assert resp.status == 303


async def test_signing_in_sets_a_strict_httponly_cookie_and_shows_real_figures(
    api: Client, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    _alice, bob = await seed(sqlite_sessions)
    resp = await api.post(
        "/admin/dashboard/login", data={"token": ADMIN_TOKEN}, allow_redirects=False
    )
    assert resp.status == 303 and resp.headers["Location"] == "/admin/dashboard"
    cookie = resp.headers["Set-Cookie"]
    assert ADMIN_TOKEN not in cookie
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age=28800"):
        assert attribute in cookie, attribute

    page = await api.get("/admin/dashboard")  # the cookie jar sends the session
    html = await page.text()
    assert page.status == 200 and page.headers["Cache-Control"] == "no-store"
    providers = await (await api.get("/admin/stats/providers", headers=ADMIN)).json()
    openai = next(r for r in providers["providers"] if r["provider"] == "openai")
    row = re.search(r'<tr data-key="openai/gpt-4o">(.*?)</tr>', html)
    assert row is not None
    assert f'class="attempts num">{openai["attempts"]}<' in row[1]
    assert f'class="latency-p50 num">{int(openai["latency_ms"]["p50"])}<' in row[1]
    assert "62.5%" in row[1]
    spend = await (await api.get("/admin/stats/spend?group=user", headers=ADMIN)).json()
    for user in spend["rows"]:
        assert user["user"] in html and user["cost_usd"] in html
    assert "<svg" in html and "alice@example.com" in html and bob in html

    assert (await api.get("/admin/dashboard?hours=0")).status == 400
    assert (await api.get("/admin/dashboard?hours=168")).status == 200

    logout = await api.post("/admin/dashboard/logout", allow_redirects=False)
    assert logout.status == 303
    api.session.cookie_jar.clear()
    assert (await api.get("/admin/dashboard", allow_redirects=False)).status == 303


async def test_an_open_circuit_shows_beside_its_provider(
    api: Client, sqlite_sessions: async_sessionmaker[AsyncSession], fake_redis: FakeRedis
) -> None:
    await seed(sqlite_sessions)
    await fake_redis.hset(  # type: ignore[misc]
        keys.circuit("openai", "gpt-4o"), mapping={"state": "open", "failures": 5, "opened_ms": 1}
    )
    html = await (await api.get("/admin/dashboard", headers=ADMIN)).text()
    openai = re.search(r'<tr data-key="openai/gpt-4o">(.*?)</tr>', html)
    openrouter = re.search(r'<tr data-key="openrouter/gpt-4o">(.*?)</tr>', html)
    assert openai is not None and 'class="circuit circuit-open">open<' in openai[1]
    assert openrouter is not None and ">closed<" in openrouter[1]


async def test_a_bearer_token_also_opens_the_page(api: Client) -> None:
    assert (await api.get("/admin/dashboard", headers=ADMIN)).status == 200
    wrong = {"Authorization": "Bearer nope"}
    assert (await api.get("/admin/dashboard", headers=wrong, allow_redirects=False)).status == 401


async def test_user_text_is_escaped(api: Client, sqlite_sessions: async_sessionmaker[AsyncSession]) -> None:
    from shared.db.repositories import users

    async with sqlite_sessions.begin() as s:
        user = await users.create_user(s, email="<script>alert(1)</script>@x.io")
    from shared.db.repositories import usage
    from tests.integration.stats.test_stats import event

    async with sqlite_sessions.begin() as s:
        await usage.record_usage(s, event(user.id))
    html = await (await api.get("/admin/dashboard", headers=ADMIN)).text()
    assert "<script>" not in html and "&lt;script&gt;" in html
