"""Operator usage queries under /admin/stats (Authorization: Bearer $ADMIN_TOKEN).

    GET /admin/stats/providers?from=&to=             per provider and model: calls, success
                                                     rate, latency/TTFT p50/p90/p99, tokens/s
    GET /admin/stats/spend?from=&to=&group=user|model|day&limit=
    GET /admin/stats/traffic?from=&to=&bucket=hour|day
    GET /admin/stats/errors?from=&to=&limit=         newest failed or fallen-back requests

`from`/`to` are ISO 8601 dates or times (UTC unless an offset is given); the default
range is the last 24 hours.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.admin_auth import require_admin
from services.api.appkeys import SESSIONS
from shared.db.repositories.stats import Bucket, SpendGroup
from shared.errors import InvalidRequest, ServiceUnavailable
from shared.stats_report import (
    RangeError,
    TimeRange,
    errors_report,
    providers_report,
    spend_report,
    traffic_report,
)

E = TypeVar("E", SpendGroup, Bucket)

MAX_LIMIT = 1000


def time_range(request: web.Request) -> TimeRange:
    try:
        return TimeRange.parse(request.query.get("from"), request.query.get("to"))
    except RangeError as exc:
        raise InvalidRequest(str(exc), param=exc.param) from None


def choice(request: web.Request, param: str, kind: type[E], default: E) -> E:
    raw = request.query.get(param)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError:
        allowed = " | ".join(member.value for member in kind)
        raise InvalidRequest(f"'{param}' must be one of: {allowed}.", param=param) from None


def limit(request: web.Request, default: int) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {MAX_LIMIT}.", param="limit")
    return int(raw)


async def read_report(
    request: web.Request, query: Callable[[AsyncSession], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Run a read-only report; a database outage is a 503, not a 500."""
    try:
        async with request.app[SESSIONS]() as session:
            return await query(session)
    except (SQLAlchemyError, OSError) as exc:
        raise ServiceUnavailable("The database is unavailable; retry later.") from exc


def _json(report: dict[str, Any]) -> web.Response:
    return web.Response(
        body=orjson.dumps(report),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def providers(request: web.Request) -> web.Response:
    require_admin(request)
    window = time_range(request)
    return _json(await read_report(request, lambda s: providers_report(s, window)))


async def spend(request: web.Request) -> web.Response:
    require_admin(request)
    window = time_range(request)
    group = choice(request, "group", SpendGroup, SpendGroup.USER)
    rows = limit(request, MAX_LIMIT)
    return _json(await read_report(request, lambda s: spend_report(s, window, group, limit=rows)))


async def traffic(request: web.Request) -> web.Response:
    require_admin(request)
    window = time_range(request)
    bucket = choice(request, "bucket", Bucket, Bucket.HOUR)
    return _json(await read_report(request, lambda s: traffic_report(s, window, bucket)))


async def errors(request: web.Request) -> web.Response:
    require_admin(request)
    window = time_range(request)
    rows = limit(request, 20)
    return _json(await read_report(request, lambda s: errors_report(s, window, limit=rows)))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/admin/stats/providers", providers)
    router.add_get("/admin/stats/spend", spend)
    router.add_get("/admin/stats/traffic", traffic)
    router.add_get("/admin/stats/errors", errors)
