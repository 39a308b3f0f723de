"""Operator alerts through ntfy (`NTFY_ERROR_URL`): one plain HTTP POST per alert.

ntfy takes the message as the body and the title, priority and tags as headers, so any
ntfy server or topic URL works (and so does anything that accepts a POST). An alert
that cannot be delivered is logged, never raised: alerting must not break billing.
"""

from __future__ import annotations

import aiohttp
import structlog

log = structlog.get_logger("billing.alerts")

ALERT_TIMEOUT_S = 10.0


async def send_alert(
    http: aiohttp.ClientSession,
    url: str,
    title: str,
    message: str,
    *,
    priority: str = "high",
    tags: str = "warning,moneybag",
) -> bool:
    """POST one alert to `url`; True when the server accepted it."""
    try:
        async with http.post(
            url,
            data=message.encode(),
            headers={"Title": title, "Priority": priority, "Tags": tags},
            timeout=aiohttp.ClientTimeout(total=ALERT_TIMEOUT_S),
        ) as resp:
            if resp.status >= 300:
                log.warning("alert_rejected", status=resp.status, title=title)
                return False
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("alert_failed", error=type(exc).__name__, title=title)
        return False
    log.info("alert_sent", title=title)
    return True
