"""What the api counts, and its one canonical log line per request.

`ApiMetrics.middleware` wraps every request (outside the error middleware, so it sees
the status the client got): it counts and times the request and logs
`request_finished` with the figures the handler left in `request_summary(request)`.
Served by `GET /metrics` on the api's own port (`services/api/routes/metrics.py`);
each api process exposes its own registry.

    gateway_http_requests_total{method,route,code}
    gateway_http_request_duration_seconds{method,route}
    gateway_http_requests_in_flight
    gateway_chat_requests_total{model,provider,stream,code}
    gateway_chat_request_duration_seconds{model,stream}
    gateway_in_flight_requests            chat requests waiting on a worker's reply
    gateway_in_flight_streams             SSE responses open now
    gateway_cache_hits_total{cache} / gateway_cache_misses_total{cache}
    gateway_stream_*{stream,group}, gateway_workers_live, gateway_redis_up   (shared/metrics)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

from shared.metrics import Children, LabelBounds, QueueGauges, Refresher, status_label
from shared.metrics.buckets import HTTP_S, LATENCY_S

log = structlog.get_logger("api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# cache name -> (hits, misses), read at scrape time.
CacheCounts = Callable[[], Mapping[str, tuple[int, int]]]

SUMMARY_KEY = web.RequestKey("gw_summary", dict)
_STREAMING_KEY = web.RequestKey("gw_streaming", bool)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# Probes and scrapes would drown the request log at info.
_QUIET_ROUTES = frozenset({"/metrics", "/health"})
_MAX_LOGGED_PATH = 200


def request_summary(request: web.Request) -> dict[str, Any]:
    """The figures a handler wants on this request's `request_finished` line (and in
    the chat metrics): model, stream, provider, tokens, cost_nusd, ttfc_ms, ..."""
    summary = request.get(SUMMARY_KEY)
    if summary is None:
        summary = request[SUMMARY_KEY] = {}
    return summary


def chat_figures(
    meta: Mapping[str, Any], *, enqueued_ms: int | None, finished: bool, admitted: bool
) -> dict[str, Any]:
    """The summary fields of a relayed chat request, from its last reply frame's meta.

    `status` on the line is what the client got; `error_status` says when a stream
    that started 200 ended with an error event.
    """
    figures: dict[str, Any] = {
        "provider": meta.get("provider"),
        "cost_nusd": meta.get("cost_nusd"),
        "client_gone": admitted and not finished,
    }
    for name in ("attempts", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens"):
        if name in meta:
            figures[name] = meta[name]
    first_chunk_ms = meta.get("first_chunk_ms")
    if first_chunk_ms and enqueued_ms:
        figures["ttfc_ms"] = max(int(first_chunk_ms) - enqueued_ms, 0)
    status = meta.get("status")
    if status is not None and status != 200:
        figures["error_status"] = status
    return figures


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class ApiMetrics:
    """The api process's metrics.

    :param registry: this process's registry.
    :param labels: bounds model and provider labels to the catalog.
    """

    def __init__(self, registry: CollectorRegistry, labels: LabelBounds) -> None:
        self.registry = registry
        self._labels = labels
        self._refreshers: list[Refresher] = []
        self.http_requests = Children(
            Counter(
                "gateway_http_requests",
                "HTTP requests answered by this api process.",
                ["method", "route", "code"],
                registry=registry,
            )
        )
        self.http_duration = Children(
            Histogram(
                "gateway_http_request_duration_seconds",
                "Time to answer an HTTP request (to the end of the stream for SSE).",
                ["method", "route"],
                buckets=HTTP_S,
                registry=registry,
            )
        )
        self.http_in_flight = Gauge(
            "gateway_http_requests_in_flight",
            "HTTP requests being handled now.",
            registry=registry,
        )
        self.chat_requests = Children(
            Counter(
                "gateway_chat_requests",
                "Chat completion requests answered, by model, provider and final status.",
                ["model", "provider", "stream", "code"],
                registry=registry,
            )
        )
        self.chat_duration = Children(
            Histogram(
                "gateway_chat_request_duration_seconds",
                "Chat completion latency as the client saw it.",
                ["model", "stream"],
                buckets=LATENCY_S,
                registry=registry,
            )
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Chat requests waiting on a worker's reply in this process.",
            registry=registry,
        )
        self.streams = Gauge(
            "gateway_in_flight_streams",
            "SSE responses open in this process.",
            registry=registry,
        )

    @property
    def refreshers(self) -> list[Refresher]:
        return list(self._refreshers)

    def add_queues(self, queues: QueueGauges) -> None:
        """Export the Redis backlog, refreshed before each scrape."""
        self.registry.register(queues)
        self._refreshers.append(queues.refresh)

    def track_in_flight(self, count: Callable[[], int]) -> None:
        self.in_flight.set_function(lambda: float(count()))

    def track_caches(self, counts: CacheCounts) -> None:
        self.registry.register(CacheCollector(counts))

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """aiohttp signal: an SSE response starts streaming before its handler returns."""
        if response.content_type == "text/event-stream" and not request.get(_STREAMING_KEY):
            request[_STREAMING_KEY] = True
            self.streams.inc()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        self.http_in_flight.inc()
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away (handler cancellation)
            raise
        finally:
            self.http_in_flight.dec()
            if request.get(_STREAMING_KEY):
                self.streams.dec()
            self._finished(request, status, time.perf_counter() - started)

    def _finished(self, request: web.Request, status: int, elapsed_s: float) -> None:
        method = request.method if request.method in _METHODS else "other"
        route = _route(request)
        code = status_label(status)
        self.http_requests(method, route, code).inc()
        self.http_duration(method, route).observe(elapsed_s)
        summary: dict[str, Any] = request.get(SUMMARY_KEY) or {}
        if "model" in summary:
            model = self._labels.model(summary["model"])
            stream = "true" if summary.get("stream") else "false"
            self.chat_requests(model, self._labels.provider(summary.get("provider")), stream, code).inc()
            self.chat_duration(model, stream).observe(elapsed_s)
        emit = log.debug if route in _QUIET_ROUTES else log.info
        fields = {
            **summary,
            "method": request.method,
            "path": request.path[:_MAX_LOGGED_PATH],  # never the query: it may hold a token
            "status": status,
            "latency_ms": round(elapsed_s * 1000, 1),
        }
        emit("request_finished", **fields)


class CacheCollector:
    """`gateway_cache_{hits,misses}_total{cache}`, read from the caches' own counters."""

    def __init__(self, counts: CacheCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        hits = CounterMetricFamily(
            "gateway_cache_hits", "In-process cache lookups answered from the cache.", labels=["cache"]
        )
        misses = CounterMetricFamily(
            "gateway_cache_misses", "In-process cache lookups that missed.", labels=["cache"]
        )
        for name, (hit, miss) in sorted(self._counts().items()):
            hits.add_metric([name], hit)
            misses.add_metric([name], miss)
        yield hits
        yield misses


API_METRICS = web.AppKey("api_metrics", ApiMetrics)
