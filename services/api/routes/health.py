"""GET /health: can this gateway serve? 200 when yes, 503 when not.

    503 "unavailable"  Redis does not answer, or no worker sent a heartbeat in 15 s:
                       a request would only wait for its deadline.
    200 "degraded"     the database does not answer: cached keys and balances still
                       serve requests, and billing settles the events once it is back.
    200 "ok"

The body also reports the backlog an operator watches: the jobs stream (waiting for a
worker), the events stream (completion events billing has not settled yet), the live
workers, and the requests in flight in this api process.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from sqlalchemy import text

from services.api.appkeys import REDIS, REPLIES, SESSIONS
from shared.metrics.queues import EVENTS, JOBS, WORKER_ALIVE_MS, read_queues

CHECK_TIMEOUT_S = 2.0
# The body lists at most this many workers (the count is always exact).
MAX_LISTED_WORKERS = 50


async def _redis_report(app: web.Application) -> dict[str, Any]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            snapshot = await read_queues(app[REDIS], (JOBS, EVENTS))
    except Exception as exc:  # noqa: BLE001 - any failure here means Redis is unusable
        return {"redis": {"ok": False, "error": type(exc).__name__}}
    jobs = snapshot.streams[JOBS.stream]
    events = snapshot.streams[EVENTS.stream]
    return {
        "redis": {"ok": True},
        "workers": {
            "live": len(snapshot.workers),
            "alive_window_ms": WORKER_ALIVE_MS,
            "ids": [
                {"id": name, "last_seen_ms": age}
                for name, age in snapshot.workers[:MAX_LISTED_WORKERS]
            ],
        },
        "jobs": {**jobs.to_dict(), "backlog": jobs.unprocessed},
        "billing": {**events.to_dict(), "unsettled": events.unprocessed},
    }


async def _database_report(app: web.Application) -> dict[str, Any]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            async with app[SESSIONS]() as session:
                await session.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True}


async def gather_health(app: web.Application) -> tuple[bool, dict[str, Any]]:
    """(can serve, report): both checks run at once, each bounded by CHECK_TIMEOUT_S."""
    redis_part, database = await asyncio.gather(_redis_report(app), _database_report(app))
    report: dict[str, Any] = {"status": "ok", **redis_part, "database": database}
    healthy = bool(redis_part["redis"]["ok"]) and redis_part["workers"]["live"] > 0
    if not database["ok"]:
        report["status"] = "degraded"
    if not healthy:
        report["status"] = "unavailable"
    report["in_flight"] = app[REPLIES].in_flight
    return healthy, report


async def health(request: web.Request) -> web.Response:
    healthy, report = await gather_health(request.app)
    return web.Response(
        status=200 if healthy else 503,
        body=orjson.dumps(report),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
