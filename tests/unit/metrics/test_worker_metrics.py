"""The worker's metrics, observed from completion events and read back as Prometheus text."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from services.worker.metrics import WorkerMetrics
from shared.catalog import load_catalog
from shared.messages import Attempt, CompletionEvent, Outcome, Usage
from shared.metrics import LabelBounds
from tests.unit.metrics.helpers import samples, scrape, value

CATALOG = load_catalog()


def event(**changes: object) -> CompletionEvent:
    base: dict[str, object] = {
        "request_id": "req_1",
        "user_id": "usr_secret_user",
        "key_id": "key_secret",
        "model_requested": "gpt-4o-mini",
        "model_served": "gpt-4o-mini",
        "provider": "openai",
        "outcome": Outcome.OK,
        "stream": True,
        "usage": Usage(prompt_tokens=100, completion_tokens=40, cached_tokens=10, reasoning_tokens=5),
        "usage_estimated": False,
        "cost_nusd": 12_345,
        "hold_nusd": 0,
        "attempts": (Attempt(provider="openai", model="gpt-4o-mini", outcome="ok", status=200),),
        "queue_wait_ms": 3,
        "ttfc_ms": 200,
        "duration_ms": 1200,
        "finished_ms": 1,
    }
    base.update(changes)
    return CompletionEvent(**base)  # type: ignore[arg-type]


def metrics() -> tuple[CollectorRegistry, WorkerMetrics]:
    registry = CollectorRegistry()
    return registry, WorkerMetrics(registry, LabelBounds(CATALOG))


def test_a_successful_stream_counts_everything_once() -> None:
    registry, m = metrics()
    m.observe(event())
    m.observe(event(request_id="req_2"))
    text = scrape(registry)
    mp = {"model": "gpt-4o-mini", "provider": "openai"}
    assert value(text, "gateway_requests_total", **mp, outcome="ok", code="200") == 2
    assert value(text, "gateway_tokens_total", **mp, kind="prompt") == 200
    assert value(text, "gateway_tokens_total", **mp, kind="completion") == 80
    assert value(text, "gateway_tokens_total", **mp, kind="cached") == 20
    assert value(text, "gateway_tokens_total", **mp, kind="reasoning") == 10
    assert value(text, "gateway_cost_nusd_total", **mp) == 24_690
    assert value(text, "gateway_request_duration_seconds_count", **mp) == 2
    assert value(text, "gateway_request_duration_seconds_sum", **mp) == 2.4
    assert value(text, "gateway_request_duration_seconds_bucket", **mp, le="1.0") == 0
    assert value(text, "gateway_request_duration_seconds_bucket", **mp, le="2.0") == 2
    assert value(text, "gateway_time_to_first_chunk_seconds_bucket", **mp, le="0.2") == 2
    assert value(text, "gateway_queue_wait_seconds_count") == 2
    # 40 tokens over 1000 ms of generation.
    assert value(text, "gateway_generation_tokens_per_second_sum", **mp) == 80.0
    assert value(
        text, "gateway_provider_attempts_total", provider="openai", model="gpt-4o-mini", outcome="ok"
    ) == 2


def test_fallbacks_and_failures_count_provider_errors_by_class() -> None:
    registry, m = metrics()
    fell_back = (
        Attempt(provider="openai", model="gpt-4o", outcome="technical", status=500, error_code="upstream_error"),
        Attempt(provider="openrouter", model="gpt-4o", outcome="ok", status=200),
    )
    m.observe(event(model_requested="gpt-4o", provider="openrouter", attempts=fell_back, ttfc_ms=None))
    refused = (
        Attempt(provider="openai", model="gpt-4o", outcome="business", status=400, error_code="weird_upstream_code_123"),
    )
    m.observe(
        event(
            model_requested="gpt-4o",
            outcome=Outcome.ERROR,
            http_status=400,
            attempts=refused,
            cost_nusd=0,
            usage=Usage(),
        )
    )
    text = scrape(registry)
    assert value(text, "gateway_requests_total", model="gpt-4o", provider="openrouter", outcome="ok", code="200") == 1
    assert value(text, "gateway_requests_total", model="gpt-4o", provider="openai", outcome="error", code="400") == 1
    errors = "gateway_provider_errors_total"
    assert value(text, errors, provider="openai", error_class="technical", status="500", code="upstream_error") == 1
    # An upstream's own error code is not a label value: it would be unbounded.
    assert value(text, errors, provider="openai", error_class="business", status="400", code="other") == 1
    assert value(text, "gateway_provider_attempts_total", provider="openai", model="gpt-4o", outcome="technical") == 1
    # No TTFT for a non-streaming answer.
    assert value(text, "gateway_time_to_first_chunk_seconds_count", model="gpt-4o", provider="openrouter") is None


def test_labels_stay_bounded_and_never_name_users() -> None:
    registry, m = metrics()
    for i in range(50):
        m.observe(event(request_id=f"req_{i}", model_requested=f"made-up-{i}", provider=f"nobody-{i}"))
    m.observe(event(model_requested="gpt-4o-mini-2024-07-18"))  # an alias folds into its model
    m.observe(event(provider=None, outcome=Outcome.ERROR, http_status=503, attempts=()))
    text = scrape(registry)
    requests = {
        labels: v for (name, labels), v in samples(text).items() if name == "gateway_requests_total"
    }
    models = {dict(labels)["model"] for labels in requests}
    providers = {dict(labels)["provider"] for labels in requests}
    assert models == {"other", "gpt-4o-mini"}
    assert providers == {"other", "openai", "none"}
    assert "usr_secret_user" not in text and "key_secret" not in text and "req_" not in text


def test_jobs_in_flight_and_circuits_are_read_at_scrape_time() -> None:
    registry, m = metrics()
    running = {"n": 3}
    circuits = {("openai", "gpt-4o"): "open", ("anthropic", "claude-made-up"): "half_open"}
    m.track_jobs(lambda: running["n"], 512)
    m.track_circuits(lambda: circuits)
    text = scrape(registry)
    assert value(text, "gateway_worker_jobs_in_flight") == 3
    assert value(text, "gateway_worker_concurrency") == 512
    state = "gateway_circuit_state"
    assert value(text, state, provider="openai", model="gpt-4o", state="open") == 1
    assert value(text, state, provider="openai", model="gpt-4o", state="closed") == 0
    assert value(text, state, provider="anthropic", model="other", state="half_open") == 1
    running["n"] = 0
    circuits[("openai", "gpt-4o")] = "closed"
    text = scrape(registry)
    assert value(text, "gateway_worker_jobs_in_flight") == 0
    assert value(text, state, provider="openai", model="gpt-4o", state="closed") == 1
