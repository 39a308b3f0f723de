"""Operator alerts: ntfy's HTTP publish, sent from an arq job so no request waits on it.

An alert is a plain dict (it crosses Redis inside an arq job): title, message, priority
(ntfy's 1..5), tags. Without `NTFY_ERROR_URL` alerts are only logged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import structlog

log = structlog.get_logger("alerts")

SEND_JOB = "send_ntfy_alert"
NTFY_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Alert:
    title: str
    message: str
    priority: int = 3  # ntfy: 1 min .. 5 max
    tags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def post_to_ntfy(session: aiohttp.ClientSession, url: str, alert: Alert) -> int:
    """Publish one alert; returns ntfy's HTTP status."""
    headers = {"Title": alert.title, "Priority": str(alert.priority)}
    if alert.tags:
        headers["Tags"] = ",".join(alert.tags)
    async with session.post(
        url,
        data=alert.message.encode(),
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=NTFY_TIMEOUT_S),
    ) as resp:
        await resp.read()
        return resp.status


async def send_ntfy_alert(ctx: dict[str, Any], alert: dict[str, Any], url: str) -> int:
    """The arq job. Raises on a failed publish so arq retries it."""
    shared: aiohttp.ClientSession | None = ctx.get("http")
    session = shared if shared is not None else aiohttp.ClientSession()
    try:
        status = await post_to_ntfy(session, url, Alert(**{**alert, "tags": tuple(alert.get("tags", ()))}))
    finally:
        if shared is None:
            await session.close()
    if status >= 400:
        raise RuntimeError(f"ntfy answered {status}")
    log.info("alert_sent", title=alert.get("title"), status=status)
    return status
