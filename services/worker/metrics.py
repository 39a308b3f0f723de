"""What the worker counts: every finished job, observed once from its `CompletionEvent`.

Served on `WORKER_METRICS_PORT` (see `shared/metrics/server.py`). Labels are bounded:
models and providers come from the catalog (anything else is "other"), statuses and
error codes from small fixed sets; never a user, key or request id.

    gateway_requests_total{model,provider,outcome,code}      jobs finished
    gateway_request_duration_seconds{model,provider}         enqueue -> last byte
    gateway_time_to_first_chunk_seconds{model,provider}      enqueue -> first content (streams)
    gateway_queue_wait_seconds                               enqueue -> a worker took it
    gateway_generation_tokens_per_second{model,provider}     completion tokens / generation time
    gateway_tokens_total{model,provider,kind}                prompt|completion|cached|reasoning
    gateway_cost_nusd_total{model,provider}                  billed cost, nano-USD
    gateway_provider_attempts_total{provider,model,outcome}  ok|technical|business|cancelled
    gateway_provider_errors_total{provider,error_class,status,code}
    gateway_worker_jobs_in_flight / gateway_worker_concurrency
    gateway_circuit_state{provider,model,state}              1 for the circuit's current state
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from shared.messages import CompletionEvent
from shared.metrics import (
    Children,
    LabelBounds,
    MetricsServer,
    QueueGauges,
    start_metrics_server,
    status_label,
)
from shared.metrics.buckets import LATENCY_S, QUEUE_WAIT_S, TIME_TO_FIRST_CHUNK_S, TOKENS_PER_S
from shared.metrics.queues import EVENTS, JOBS

if TYPE_CHECKING:
    from redis.asyncio import Redis

CIRCUIT_STATES = ("closed", "open", "half_open")

# (provider, model) -> circuit state name, as the worker's routing last saw it.
CircuitSnapshot = Callable[[], Mapping[tuple[str, str], str]]


class WorkerMetrics:
    """The worker's metrics on `registry`; `observe(event)` once per finished job."""

    def __init__(self, registry: CollectorRegistry, labels: LabelBounds) -> None:
        self.registry = registry
        self._labels = labels
        model_provider = ["model", "provider"]
        self.requests = Children(
            Counter(
                "gateway_requests",
                "Chat completion jobs finished by the workers.",
                ["model", "provider", "outcome", "code"],
                registry=registry,
            )
        )
        self.duration = Children(
            Histogram(
                "gateway_request_duration_seconds",
                "From the api queueing the job to the worker finishing it.",
                model_provider,
                buckets=LATENCY_S,
                registry=registry,
            )
        )
        self.ttfc = Children(
            Histogram(
                "gateway_time_to_first_chunk_seconds",
                "From the api queueing a streaming job to its first content chunk.",
                model_provider,
                buckets=TIME_TO_FIRST_CHUNK_S,
                registry=registry,
            )
        )
        self.queue_wait = Histogram(
            "gateway_queue_wait_seconds",
            "From the api queueing a job to a worker starting it.",
            buckets=QUEUE_WAIT_S,
            registry=registry,
        )
        self.tokens_per_s = Children(
            Histogram(
                "gateway_generation_tokens_per_second",
                "Completion tokens per second of generation (after the first chunk).",
                model_provider,
                buckets=TOKENS_PER_S,
                registry=registry,
            )
        )
        self.tokens = Children(
            Counter(
                "gateway_tokens",
                "Tokens billed; cached is part of prompt, reasoning part of completion.",
                ["model", "provider", "kind"],
                registry=registry,
            )
        )
        self.cost = Children(
            Counter(
                "gateway_cost_nusd",
                "Cost billed for finished jobs, in nano-USD (1e-9 USD).",
                model_provider,
                registry=registry,
            )
        )
        self.attempts = Children(
            Counter(
                "gateway_provider_attempts",
                "Calls to providers, by how they ended.",
                ["provider", "model", "outcome"],
                registry=registry,
            )
        )
        self.errors = Children(
            Counter(
                "gateway_provider_errors",
                "Failed provider calls: technical (fell back) or business (returned).",
                ["provider", "error_class", "status", "code"],
                registry=registry,
            )
        )
        self.in_flight = Gauge(
            "gateway_worker_jobs_in_flight", "Jobs this worker is running now.", registry=registry
        )
        self.concurrency = Gauge(
            "gateway_worker_concurrency", "Jobs this worker runs at most at once.", registry=registry
        )

    def observe(self, event: CompletionEvent) -> None:
        """Count one finished job: a handful of increments on memoised children."""
        lb = self._labels
        model, provider = lb.model(event.model_requested), lb.provider(event.provider)
        self.requests(model, provider, event.outcome.value, status_label(event.http_status)).inc()
        self.duration(model, provider).observe(event.duration_ms / 1000)
        if event.ttfc_ms is not None:
            self.ttfc(model, provider).observe(event.ttfc_ms / 1000)
        self.queue_wait.observe(event.queue_wait_ms / 1000)
        rate = event.tokens_per_second()
        if rate is not None:
            self.tokens_per_s(model, provider).observe(rate)
        usage = event.usage
        for kind, count in (
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
            ("cached", usage.cached_tokens),
            ("reasoning", usage.reasoning_tokens),
        ):
            if count:
                self.tokens(model, provider, kind).inc(count)
        if event.cost_nusd:
            self.cost(model, provider).inc(event.cost_nusd)
        for attempt in event.attempts:
            attempt_provider = lb.provider(attempt.provider)
            self.attempts(attempt_provider, lb.model(attempt.model), attempt.outcome).inc()
            if attempt.outcome in ("technical", "business"):
                self.errors(
                    attempt_provider,
                    attempt.outcome,
                    status_label(attempt.status),
                    lb.error_code(attempt.error_code),
                ).inc()

    def track_jobs(self, in_flight: Callable[[], int], concurrency: int) -> None:
        """Read the worker's running-job count at scrape time."""
        self.in_flight.set_function(lambda: float(in_flight()))
        self.concurrency.set(concurrency)

    def track_circuits(self, snapshot: CircuitSnapshot) -> None:
        """Export circuit states read from `snapshot` at scrape time."""
        self.registry.register(CircuitCollector(snapshot, self._labels))


class CircuitCollector:
    """`gateway_circuit_state{provider,model,state}`: 1 for each circuit's current state."""

    def __init__(self, snapshot: CircuitSnapshot, labels: LabelBounds) -> None:
        self._snapshot = snapshot
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "gateway_circuit_state",
            "Circuit breaker state per provider and model (1 for the current state).",
            labels=["provider", "model", "state"],
        )
        for (provider, model), state in sorted(self._snapshot().items()):
            p, m = self._labels.provider(provider), self._labels.model(model)
            for name in CIRCUIT_STATES:
                family.add_metric([p, m, name], 1.0 if state == name else 0.0)
        yield family


async def serve_worker_metrics(
    metrics: WorkerMetrics,
    redis: Redis,
    *,
    host: str,
    port: int,
    running: Callable[[], int],
    concurrency: int,
    circuits: CircuitSnapshot | None = None,
) -> MetricsServer | None:
    """Wire the scrape-time readings and serve `GET /metrics` on the worker's port.

    :param running: how many jobs the worker holds now.
    :param circuits: the worker's circuit snapshot, as state names.
    """
    metrics.track_jobs(running, concurrency)
    if circuits is not None:
        metrics.track_circuits(circuits)
    queues = QueueGauges(redis, (JOBS, EVENTS))
    metrics.registry.register(queues)
    return await start_metrics_server(metrics.registry, [queues.refresh], host=host, port=port)
