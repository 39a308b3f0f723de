"""Serving a registry: the `/metrics` response, and a small server for processes without one.

The api mounts `render_metrics` on its own port. The worker and billing have no HTTP
server of their own, so `start_metrics_server` runs a tiny aiohttp app on their metrics
port (`WORKER_METRICS_PORT`, `BILLING_METRICS_PORT`; 0 turns it off). It runs on the
process's event loop, so the async refreshers (Redis backlog, circuit states) can be
awaited right before each scrape renders.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = structlog.get_logger("metrics")

Refresher = Callable[[], Awaitable[None]]

REFRESH_TIMEOUT_S = 2.0


async def render_metrics(
    registry: CollectorRegistry, refreshers: Sequence[Refresher] = ()
) -> web.Response:
    """Run the refreshers (bounded in time), then render the registry as Prometheus text."""
    if refreshers:
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT_S):
                await asyncio.gather(*(refresh() for refresh in refreshers))
        except TimeoutError:
            log.warning("metrics_refresh_slow", timeout_s=REFRESH_TIMEOUT_S)
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_app(registry: CollectorRegistry, refreshers: Sequence[Refresher] = ()) -> web.Application:
    async def handler(_request: web.Request) -> web.Response:
        return await render_metrics(registry, refreshers)

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app


@dataclass(slots=True)
class MetricsServer:
    runner: web.AppRunner
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_metrics_server(
    registry: CollectorRegistry,
    refreshers: Sequence[Refresher] = (),
    *,
    host: str,
    port: int,
) -> MetricsServer | None:
    """Serve `GET /metrics` on host:port. None when port is 0 or cannot be bound: a busy
    metrics port is logged and never stops the service itself."""
    if port <= 0:
        return None
    runner = web.AppRunner(metrics_app(registry, refreshers), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        log.warning("metrics_port_unavailable", host=host, port=port, error=str(exc))
        await runner.cleanup()
        return None
    log.info("metrics_listening", host=host, port=port)
    return MetricsServer(runner=runner, port=port)
