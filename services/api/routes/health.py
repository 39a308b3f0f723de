"""GET /health: can this gateway serve? 200 when yes, 503 when not (no Redis, no worker)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web
from sqlalchemy import text

from services.api.appkeys import REDIS, REPLIES, SESSIONS
from shared.redis import keys

WORKER_ALIVE_MS = 15_000
CHECK_TIMEOUT_S = 2.0


async def _group_info(redis: Any, stream: str, group: str) -> dict[str, Any] | None:
    try:
        groups = await redis.xinfo_groups(stream)
    except Exception:  # noqa: BLE001 - stream not created yet
        return None
    for info in groups:
        name = info.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == group:
            return {"pending": int(info.get("pending") or 0), "lag": int(info.get("lag") or 0)}
    return None


async def health(request: web.Request) -> web.Response:
    redis = request.app[REDIS]
    report: dict[str, Any] = {"status": "ok"}
    healthy = True

    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await redis.ping()
            now = int(time.time() * 1000)
            workers = await redis.zcount(keys.WORKERS_HEARTBEAT, now - WORKER_ALIVE_MS, "+inf")
            jobs = await _group_info(redis, keys.JOBS_STREAM, keys.JOBS_GROUP)
            events = await _group_info(redis, keys.EVENTS_STREAM, keys.EVENTS_GROUP)
        report["redis"] = {"ok": True}
        report["workers"] = {"live": workers}
        report["jobs"] = jobs or {"pending": 0, "lag": 0}
        report["billing"] = events or {"pending": 0, "lag": 0}
        if workers == 0:
            healthy = False
    except Exception as exc:  # noqa: BLE001 - any failure here means Redis is unusable
        report["redis"] = {"ok": False, "error": type(exc).__name__}
        healthy = False

    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            async with request.app[SESSIONS]() as session:
                await session.execute(text("SELECT 1"))
        report["database"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001
        # Requests are still served (keys and balances are cached); billing catches up later.
        report["database"] = {"ok": False, "error": type(exc).__name__}
        report["status"] = "degraded"

    report["in_flight"] = request.app[REPLIES].in_flight
    if not healthy:
        report["status"] = "unavailable"
    return web.Response(
        status=200 if healthy else 503,
        body=orjson.dumps(report),
        content_type="application/json",
    )
