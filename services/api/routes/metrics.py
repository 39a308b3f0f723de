"""GET /metrics: this api process's Prometheus metrics; `setup_metrics(app)` wires them.

Each api process serves its own registry (no multiprocess mode): Prometheus scrapes
every replica and sums. Backlog gauges (Redis streams, live workers) are read at
scrape time, so every replica reports the same values for them: aggregate with max().
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry

from services.api.appkeys import AUTH, CATALOG, REDIS, REPLIES
from services.api.metrics import API_METRICS, ApiMetrics
from shared.metrics import LabelBounds, QueueGauges, render_metrics
from shared.metrics.queues import EVENTS, JOBS


async def metrics(request: web.Request) -> web.Response:
    api_metrics = request.app[API_METRICS]
    return await render_metrics(api_metrics.registry, api_metrics.refreshers)


def _cache_counts(auth: object) -> Mapping[str, tuple[int, int]]:
    # The authenticator's caches count their own hits and misses, by cache name.
    hits: Mapping[str, int] = getattr(auth, "cache_hits", None) or {}
    misses: Mapping[str, int] = getattr(auth, "cache_misses", None) or {}
    return {name: (hits.get(name, 0), misses.get(name, 0)) for name in {*hits, *misses}}


def setup_metrics(app: web.Application) -> ApiMetrics:
    """Count every request (outermost middleware), serve GET /metrics, and read the
    Redis backlog, in-flight requests and cache counters at scrape time."""
    api_metrics = ApiMetrics(CollectorRegistry(), LabelBounds(app[CATALOG]))
    app[API_METRICS] = api_metrics
    # Outermost, so it sees the status the error middleware rendered.
    app.middlewares.insert(0, api_metrics.middleware)
    app.on_response_prepare.append(api_metrics.on_response_prepare)

    async def attach(app: web.Application) -> None:
        # on_startup runs after every cleanup context: Redis, replies and auth exist.
        api_metrics.add_queues(QueueGauges(app[REDIS], (JOBS, EVENTS)))
        api_metrics.track_in_flight(lambda: app[REPLIES].in_flight)
        auth = app[AUTH]
        api_metrics.track_caches(lambda: _cache_counts(auth))

    app.on_startup.append(attach)
    app.router.add_get("/metrics", metrics)
    return api_metrics
