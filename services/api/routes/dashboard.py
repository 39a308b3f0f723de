"""The operator dashboard: GET /admin/dashboard, a server-rendered page with no script.

    GET  /admin/dashboard?hours=24     the page (session cookie or Bearer ADMIN_TOKEN)
    GET  /admin/dashboard/login        the sign-in form
    POST /admin/dashboard/login        token in the form body -> session cookie, 303 to the page
    POST /admin/dashboard/logout       clears the cookie
    GET  /admin/dashboard/dashboard.css

See `services/api/admin_session.py` for the cookie. Pages are sent with a strict
Content-Security-Policy (no script, styles from this origin only), no framing, no
referrer and no caching.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from services.api import admin_session
from services.api.admin_auth import require_admin
from services.api.appkeys import REDIS, SETTINGS
from services.api.dashboard_view import CSS, DashboardData, dashboard_page, login_page, page
from services.api.routes.admin_stats import read_report
from services.api.routes.health import CHECK_TIMEOUT_S, gather_health
from shared.circuit import Circuits
from shared.db.repositories.stats import Bucket, SpendGroup
from shared.errors import InvalidRequest, ServiceUnavailable
from shared.stats_report import (
    TimeRange,
    errors_report,
    providers_report,
    spend_report,
    traffic_report,
)

PATH = "/admin/dashboard"
LOGIN_PATH = "/admin/dashboard/login"
MAX_HOURS = 24 * 31
# A wrong token costs the guesser this long, without costing the server anything.
FAILED_LOGIN_DELAY_S = 0.5

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(
        text=body, status=status, content_type="text/html", headers=SECURITY_HEADERS
    )


def _admin_token(request: web.Request) -> str:
    token = request.app[SETTINGS].admin_token
    if not token:
        require_admin(request)  # raises the "admin API disabled" 403
    return token


def _signed_in(request: web.Request, token: str) -> bool:
    if admin_session.has_session(request, token):
        return True
    if request.headers.get("Authorization"):
        require_admin(request)  # a wrong bearer token is a 401, not a redirect
        return True
    return False


def _hours(request: web.Request) -> int:
    raw = request.query.get("hours", "24")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_HOURS:
        raise InvalidRequest(f"'hours' must be an integer from 1 to {MAX_HOURS}.", param="hours")
    return int(raw)


async def dashboard(request: web.Request) -> web.Response:
    token = _admin_token(request)
    if not _signed_in(request, token):
        raise web.HTTPSeeOther(LOGIN_PATH, headers=SECURITY_HEADERS)
    hours = _hours(request)
    end = datetime.now(UTC)
    window = TimeRange(end - timedelta(hours=hours), end)
    bucket = Bucket.HOUR if hours <= 72 else Bucket.DAY
    _healthy, health = await gather_health(request.app)

    async def reports(session: AsyncSession) -> dict[str, Any]:
        return {
            "providers": await providers_report(session, window),
            "users": await spend_report(session, window, SpendGroup.USER, limit=10),
            "models": await spend_report(session, window, SpendGroup.MODEL, limit=20),
            "traffic": await traffic_report(session, window, bucket),
            "errors": await errors_report(session, window, limit=20),
        }

    try:
        found = await read_report(request, reports)
    except ServiceUnavailable:
        status = health.get("status", "unknown")
        return _html(
            page(
                '<p class="error">The database is unavailable, so usage figures cannot be '
                f"shown. Gateway status: {escape(str(status))}.</p>"
            ),
            status=503,
        )
    circuits = await _circuits(request, found["providers"]["providers"])
    data = DashboardData(
        hours=hours, start=window.start, end=window.end, health=health, circuits=circuits, **found
    )
    return _html(dashboard_page(data))


async def _circuits(
    request: web.Request, rows: list[dict[str, Any]]
) -> dict[tuple[str, str], str]:
    """Each listed provider's circuit breaker state, as the workers share it in Redis."""
    pairs = [(r["provider"], r["model"]) for r in rows if r["provider"] and r["model"]]
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            views = await Circuits(request.app[REDIS]).read(pairs)
    except Exception:  # noqa: BLE001 - the page still shows everything else
        return {}
    return {pair: view.state.value for pair, view in views.items()}


async def login_form(request: web.Request) -> web.Response:
    _admin_token(request)
    return _html(login_page())


async def login(request: web.Request) -> web.Response:
    token = _admin_token(request)
    form = await request.post()
    submitted = form.get("token")
    if not isinstance(submitted, str) or not admin_session.token_matches(token, submitted.strip()):
        await asyncio.sleep(FAILED_LOGIN_DELAY_S)
        return _html(login_page("That is not the admin token."), status=401)
    response = web.HTTPSeeOther(PATH, headers=SECURITY_HEADERS)
    admin_session.set_cookie(response, request, token)
    raise response


async def logout(_request: web.Request) -> web.Response:
    response = web.HTTPSeeOther(LOGIN_PATH, headers=SECURITY_HEADERS)
    admin_session.clear_cookie(response)
    raise response


async def stylesheet(_request: web.Request) -> web.Response:
    return web.Response(
        body=CSS,
        content_type="text/css",
        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(PATH, dashboard)
    router.add_get(LOGIN_PATH, login_form)
    router.add_post(LOGIN_PATH, login)
    router.add_post("/admin/dashboard/logout", logout)
    router.add_get("/admin/dashboard/dashboard.css", stylesheet)

