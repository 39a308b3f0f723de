"""Operator alerts through ntfy (`NTFY_ERROR_URL`): one plain HTTP POST per alert.

ntfy takes the message as the body and the title, priority (1..5) and tags as headers,
so any ntfy server or topic URL works. Alerts travel as arq jobs (`send_ntfy_alert`),
so no request or settlement ever waits on one. An alert that cannot be delivered is
logged, never raised: alerting must not break the service that raises it. Without
`NTFY_ERROR_URL`, alerts are only logged.
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        return cls(
            title=str(data["title"]),
            message=str(data["message"]),
            priority=int(data.get("priority", 3)),
            tags=tuple(data.get("tags", ())),
        )


async def post_to_ntfy(session: aiohttp.ClientSession, url: str, alert: Alert) -> bool:
    """Publish one alert; True when ntfy accepted it."""
    headers = {"Title": alert.title, "Priority": str(alert.priority)}
    if alert.tags:
        headers["Tags"] = ",".join(alert.tags)
    try:
        async with session.post(
            url,
            data=alert.message.encode(),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=NTFY_TIMEOUT_S),
        ) as resp:
            await resp.read()
            if resp.status >= 300:
                log.warning("alert_rejected", status=resp.status, title=alert.title)
                return False
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("alert_failed", error=type(exc).__name__, title=alert.title)
        return False
    log.info("alert_sent", title=alert.title)
    return True


async def send_ntfy_alert(ctx: dict[str, Any], alert: dict[str, Any], url: str) -> bool:
    """The arq job. Uses the worker's shared session (`ctx["http"]`) when there is one."""
    shared: aiohttp.ClientSession | None = ctx.get("http")
    session = shared if shared is not None else aiohttp.ClientSession()
    try:
        return await post_to_ntfy(session, url, Alert.from_dict(alert))
    finally:
        if shared is None:
            await session.close()
