"""Prometheus metrics plumbing shared by the api, worker and billing processes.

Each process builds its own `CollectorRegistry` (no global default registry, so tests
and several apps in one process never collide) and serves it at `GET /metrics`:

- `labels.py`   bounded label values: models and providers from the catalog, else "other";
- `queues.py`   Redis stream backlog and live workers, read asynchronously at scrape time;
- `server.py`   the exposition handler, and a tiny aiohttp server for the worker and billing.

What each service counts lives beside it: `services/api/metrics.py`,
`services/worker/metrics.py`, `services/billing/metrics.py`.
"""

from shared.metrics.labels import OTHER, Children, LabelBounds, status_label
from shared.metrics.queues import QueueGauges, StreamRef
from shared.metrics.server import (
    MetricsServer,
    Refresher,
    render_metrics,
    start_metrics_server,
)

__all__ = [
    "OTHER",
    "Children",
    "LabelBounds",
    "MetricsServer",
    "QueueGauges",
    "Refresher",
    "StreamRef",
    "render_metrics",
    "start_metrics_server",
    "status_label",
]
