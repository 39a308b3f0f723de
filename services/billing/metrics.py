"""What billing counts: each completion event it handles, and the events still unsettled.

Served on `BILLING_METRICS_PORT` (see `shared/metrics/server.py`).

    gateway_billing_events_total{result}        settled | skipped (already settled, unknown user)
    gateway_billing_settled_nusd_total          nano-USD debited by settlements
    gateway_billing_settle_delay_seconds        worker finished the job -> billing settled it
    gateway_stream_unprocessed{stream="gw:events",group="billing"}   events not settled yet
    gateway_stream_length{stream="gw:events:dead"}                   dead-lettered events
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.messages import CompletionEvent
from shared.metrics import MetricsServer, QueueGauges, Refresher, StreamRef, start_metrics_server
from shared.metrics.queues import EVENTS, JOBS

if TYPE_CHECKING:
    from redis.asyncio import Redis

SETTLE_DELAY_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class BillingMetrics:
    """Billing's metrics on `registry`; `observe(event, settled=...)` once per handled event.

    :param redis: read at scrape time for the events backlog.
    :param dead_letter_stream: where undecodable or unsettleable events are parked.
    """

    def __init__(
        self, registry: CollectorRegistry, redis: Redis, *, dead_letter_stream: str
    ) -> None:
        self.registry = registry
        events = Counter(
            "gateway_billing_events",
            "Completion events handled by billing, by result.",
            ["result"],
            registry=registry,
        )
        self._settled = events.labels("settled")
        self._skipped = events.labels("skipped")
        self.settled_nusd = Counter(
            "gateway_billing_settled_nusd",
            "Cost debited by settlements, in nano-USD.",
            registry=registry,
        )
        self.settle_delay = Histogram(
            "gateway_billing_settle_delay_seconds",
            "From the worker finishing a job to billing settling its event.",
            buckets=SETTLE_DELAY_S,
            registry=registry,
        )
        self.queues = QueueGauges(
            redis, (EVENTS, JOBS, StreamRef(dead_letter_stream)), workers=False
        )
        registry.register(self.queues)

    @property
    def refreshers(self) -> list[Refresher]:
        return [self.queues.refresh]

    async def serve(self, *, host: str, port: int) -> MetricsServer | None:
        """Serve `GET /metrics` on billing's port (None when off or the port is busy)."""
        return await start_metrics_server(self.registry, self.refreshers, host=host, port=port)

    def observe_batch(self, settled: Sequence[CompletionEvent], *, skipped: int) -> None:
        """A batch settled in one transaction: `skipped` events were already settled."""
        for event in settled:
            self.observe(event, settled=True)
        if skipped:
            self._skipped.inc(skipped)

    def observe(self, event: CompletionEvent, *, settled: bool) -> None:
        if not settled:
            self._skipped.inc()
            return
        self._settled.inc()
        if event.cost_nusd:
            self.settled_nusd.inc(event.cost_nusd)
        if event.finished_ms:
            delay_ms = time.time_ns() // 1_000_000 - event.finished_ms
            self.settle_delay.observe(max(delay_ms, 0) / 1000)
