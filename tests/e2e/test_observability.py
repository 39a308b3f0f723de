"""What operators see, through real processes: usage rows, /metrics on every service,
/health, the logs of all three services, the admin API and CLI, and the dashboard in
headless Chromium.

One scripted mix of traffic through one fake upstream serving two providers of one
model: plain answers, streams, a fallback (alpha fails with 500, beta answers), a
request every provider fails, and a business error returned at once.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import signal
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.runner import free_port
from tests.e2e.conftest import Stack, http, running_stack

CATALOG = """
providers:
  alpha: {adapter: openai, base_url: "http://unused", key_env: API_KEY_ALPHA}
  beta: {adapter: openai, base_url: "http://unused", key_env: API_KEY_BETA}
models:
  - id: duo
    capabilities: [streaming]
    offers:
      - {provider: alpha, upstream_model: duo-alpha, input: "1.00", output: "2.00"}
      - {provider: beta, upstream_model: duo-beta, input: "3.00", output: "4.00"}
"""
SECRET = "quokka-zebra-4417"
PROMPT = f"Remember the passphrase {SECRET} and answer briefly."
UPSTREAM_KEY = "sk-upstream-" + secrets.token_hex(16)
ADMIN_TOKEN = "admin-" + secrets.token_hex(16)
ORDER = {"provider": {"order": ["alpha", "beta"]}}
STREAM_SHAPE = "[[fake:ttft_ms=120,chunk_delay_ms=25]]"


@dataclass
class Observed:
    stack: Stack
    user_id: str
    key: str
    worker_metrics_url: str
    billing_metrics_url: str
    ids: dict[str, list[str]] = field(default_factory=dict)

    @property
    def all_ids(self) -> list[str]:
        return [rid for ids in self.ids.values() for rid in ids]


def _client(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=stack.api_url + "/v1", max_retries=0, timeout=30)


def _traffic(stack: Stack, key: str) -> dict[str, list[str]]:
    client = _client(stack, key)
    ids: dict[str, list[str]] = {k: [] for k in ("json", "stream", "fallback", "failed", "refused")}
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="duo", messages=[{"role": "user", "content": PROMPT}], extra_body=ORDER
        )
        ids["json"].append(raw.headers["x-request-id"])
    for _ in range(2):
        streamed = client.chat.completions.with_raw_response.create(
            model="duo",
            messages=[{"role": "user", "content": f"{PROMPT} {STREAM_SHAPE}"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body=ORDER,
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
        ids["stream"].append(streamed.headers["x-request-id"])
    # alpha's next call fails with a 500; beta serves the request instead.
    status, _ = http(
        "POST",
        stack.fake_url + "/_fake/script",
        orjson.dumps([{"status": 500, "model": "duo-alpha"}]),
    )
    assert status < 300
    raw = client.chat.completions.with_raw_response.create(
        model="duo", messages=[{"role": "user", "content": PROMPT}], extra_body=ORDER
    )
    assert raw.headers["x-gateway-provider"] == "beta"
    ids["fallback"].append(raw.headers["x-request-id"])
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(
            model="duo",
            messages=[{"role": "user", "content": f"{PROMPT} [[fake:status=500]]"}],
            extra_body=ORDER,
        )
    assert failed.value.status_code == 502
    ids["failed"].append(failed.value.response.headers["x-request-id"])
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="duo",
            messages=[{"role": "user", "content": f"{PROMPT} [[fake:status=400]]"}],
            extra_body=ORDER,
        )
    ids["refused"].append(refused.value.response.headers["x-request-id"])
    return ids


def usage_rows(stack: Stack, ids: list[str]) -> dict[str, Any]:
    rows = stack.query("SELECT * FROM usage_records WHERE request_id = ANY($1::text[])", ids)
    return {row["request_id"]: row for row in rows}


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    catalog = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    catalog.write_text(CATALOG)
    worker_port, billing_port = free_port(), free_port()
    with running_stack(
        tmp_path_factory,
        demo=False,
        env_overrides={
            "CATALOG_PATH": str(catalog),
            "API_KEY_ALPHA": UPSTREAM_KEY,
            "API_KEY_BETA": UPSTREAM_KEY,
            "BASE_URL_ALPHA": "{fake}/v1",
            "BASE_URL_BETA": "{fake}/v1",
            "PROVIDER_MAX_RETRIES": "0",
            "CIRCUIT_FAILURE_THRESHOLD": "1000",
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "WORKER_METRICS_PORT": str(worker_port),
            "BILLING_METRICS_PORT": str(billing_port),
            # Debug lines too: the log scan must find no secret even at the chattiest level.
            "LOG_LEVEL": "debug",
        },
    ) as stack:
        user_id, key = stack.new_funded_user("10")
        found = Observed(
            stack,
            user_id,
            key,
            f"http://127.0.0.1:{worker_port}/metrics",
            f"http://127.0.0.1:{billing_port}/metrics",
        )
        found.ids = _traffic(stack, key)
        stack.wait_until(
            lambda: len(usage_rows(stack, found.all_ids)) == len(found.all_ids),
            what="billing to settle the traffic",
        )
        yield found


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


class TestUsageRows:
    def test_rows_hold_the_figures_of_each_kind_of_request(self, observed: Observed) -> None:
        rows = usage_rows(observed.stack, observed.all_ids)
        for row in rows.values():
            assert row["user_id"] == observed.user_id and row["key_id"]
            assert row["model_requested"] == "duo" and row["client_cancelled"] is False
            assert 0 <= row["queue_wait_ms"] <= row["duration_ms"]

        for rid in observed.ids["json"]:
            row = rows[rid]
            assert (row["status"], row["provider"], row["attempts"], row["stream"]) == ("ok", "alpha", 1, False)
            assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and row["cost_nusd"] > 0
            assert row["ttfc_ms"] is None

        for rid in observed.ids["stream"]:
            row = rows[rid]
            assert row["stream"] is True and row["status"] == "ok"
            # The fake waits 120 ms before its first chunk, then 25 ms between chunks.
            assert 120 <= row["ttfc_ms"] < row["duration_ms"]
            generation_ms = row["duration_ms"] - row["ttfc_ms"]
            assert row["tokens_per_second"] == round(row["completion_tokens"] * 1000 / generation_ms, 2)

        fallback = rows[observed.ids["fallback"][0]]
        assert (fallback["status"], fallback["provider"], fallback["attempts"]) == ("ok", "beta", 2)
        first, second = orjson.loads(fallback["attempts_detail"])  # asyncpg returns json as text
        assert (first["provider"], first["outcome"], first["status"]) == ("alpha", "technical", 500)
        assert (second["provider"], second["outcome"]) == ("beta", "ok")

        failed = rows[observed.ids["failed"][0]]
        assert (failed["status"], failed["error_class"], failed["http_status"]) == ("error", "technical", 502)
        assert failed["attempts"] == 2 and failed["cost_nusd"] == 0

        refused = rows[observed.ids["refused"][0]]
        assert (refused["status"], refused["error_class"], refused["http_status"]) == ("error", "business", 400)
        assert refused["attempts"] == 1


class TestMetrics:
    def test_each_service_counts_the_requests_sent(self, observed: Observed) -> None:
        rows = usage_rows(observed.stack, observed.all_ids)
        sent = len(observed.all_ids)

        api = scrape(observed.stack.api_url + "/metrics")
        assert total(api, "gateway_chat_requests_total", model="duo") == sent
        assert total(api, "gateway_chat_requests_total", model="duo", code="200") == 6
        assert total(api, "gateway_chat_requests_total", model="duo", code="502") == 1
        assert total(api, "gateway_chat_requests_total", model="duo", code="400") == 1
        assert total(api, "gateway_http_requests_total", route="/v1/chat/completions") == sent
        assert total(api, "gateway_chat_request_duration_seconds_count", model="duo") == sent
        assert total(api, "gateway_in_flight_requests") == 0
        assert total(api, "gateway_workers_live") == 1

        worker = scrape(observed.worker_metrics_url)
        assert total(worker, "gateway_requests_total", model="duo") == sent
        assert total(worker, "gateway_requests_total", model="duo", outcome="ok") == 6
        assert total(worker, "gateway_requests_total", model="duo", outcome="error") == 2
        errors = "gateway_provider_errors_total"
        assert total(worker, errors, provider="alpha", error_class="technical", status="500") == 2
        assert total(worker, errors, provider="beta", error_class="technical", status="500") == 1
        assert total(worker, errors, provider="alpha", error_class="business", status="400") == 1
        assert total(worker, "gateway_provider_attempts_total", provider="alpha", outcome="ok") == 5
        assert total(worker, "gateway_time_to_first_chunk_seconds_count", model="duo") == 2
        for kind in ("prompt", "completion"):
            expected = sum(row[f"{kind}_tokens"] for row in rows.values())
            assert total(worker, "gateway_tokens_total", model="duo", kind=kind) == expected
        cost = sum(row["cost_nusd"] for row in rows.values())
        assert cost > 0 and total(worker, "gateway_cost_nusd_total", model="duo") == cost
        assert total(worker, "gateway_worker_jobs_in_flight") == 0
        assert total(worker, "gateway_circuit_state", provider="alpha", model="duo", state="closed") == 1

        billing = scrape(observed.billing_metrics_url)
        assert total(billing, "gateway_billing_events_total", result="settled") == sent
        assert total(billing, "gateway_billing_settled_nusd_total") == cost
        assert total(billing, "gateway_stream_unprocessed", stream="gw:events") == 0


def log_lines(stack: Stack, service: str) -> list[dict[str, Any]]:
    lines = []
    for raw in (stack.log_dir / f"{service}.log").read_text().splitlines():
        if raw.startswith("{"):
            lines.append(orjson.loads(raw))
    return lines


class TestLogs:
    def test_one_request_id_across_api_worker_and_billing(self, observed: Observed) -> None:
        stream_id = observed.ids["stream"][0]
        fallback_id = observed.ids["fallback"][0]
        api, worker, billing = (log_lines(observed.stack, s) for s in ("api", "worker", "billing"))

        finished = [line for line in api if line.get("request_id") == stream_id]
        summary = next(line for line in finished if line["event"] == "request_finished")
        assert summary["service"] == "api" and summary["status"] == 200
        assert (summary["model"], summary["provider"], summary["stream"]) == ("duo", "alpha", True)
        assert summary["prompt_tokens"] > 0 and summary["completion_tokens"] > 0
        assert summary["cost_nusd"] > 0 and summary["latency_ms"] > 0
        assert 0 < summary["ttfc_ms"] < summary["latency_ms"]
        # Exactly one summary line per request.
        summaries = Counter(
            line["request_id"] for line in api if line["event"] == "request_finished" and "request_id" in line
        )
        assert all(summaries[rid] == 1 for rid in observed.all_ids)

        job = next(l for l in worker if l.get("request_id") == stream_id and l["event"] == "job_finished")
        assert job["service"] == "worker" and job["provider"] == "alpha"
        settled = next(l for l in billing if l.get("request_id") == stream_id and l["event"] == "event_settled")
        assert settled["service"] == "billing" and settled["cost_nusd"] == summary["cost_nusd"]

        failure = next(
            l for l in worker if l.get("request_id") == fallback_id and l["event"] == "provider_failed"
        )
        assert (failure["provider"], failure["error_class"], failure["status"]) == ("alpha", "technical", 500)

    def test_no_key_token_or_prompt_in_any_log_line(self, observed: Observed) -> None:
        scanned = 0
        for service in ("api", "worker", "billing"):
            text = (observed.stack.log_dir / f"{service}.log").read_text()
            scanned += len(text.splitlines())
            for secret in (observed.key, UPSTREAM_KEY, ADMIN_TOKEN, SECRET):
                assert secret not in text, f"{service}.log holds a secret"
        debug_lines = [l for l in log_lines(observed.stack, "api") if l.get("level") == "debug"]
        assert scanned > 20 and debug_lines, "the scan must have had debug lines to look at"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")


class TestOperatorViews:
    def test_cli_prints_what_the_admin_api_returns(self, observed: Observed) -> None:
        stack = observed.stack
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        now = datetime.now(UTC)
        start = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        end = (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        query = f"from={start}&to={end}"
        status, from_api = http("GET", f"{stack.api_url}/admin/stats/providers?{query}", headers=admin)
        assert status == 200
        printed = orjson.loads(stack.cli("usage", "providers", "--from", start, "--to", end, "--json"))
        assert printed == from_api
        status, spend = http("GET", f"{stack.api_url}/admin/stats/spend?group=user&{query}", headers=admin)
        assert status == 200 and spend["rows"]
        table = stack.cli("usage", "spend", "--group", "user", "--from", start, "--to", end)
        for row in spend["rows"]:
            line = next(line for line in table.splitlines() if line.startswith(row["user"]))
            assert row["cost_usd"] in line and str(row["requests"]) in line.split()

    def test_dashboard_renders_the_admin_figures_in_chromium(
        self, observed: Observed, tmp_path: Path
    ) -> None:
        chromium = _chromium()
        sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
        stack = observed.stack
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        _, providers = http("GET", f"{stack.api_url}/admin/stats/providers", headers=admin)
        _, spend = http("GET", f"{stack.api_url}/admin/stats/spend?group=user", headers=admin)
        screenshot = tmp_path / "dashboard.png"

        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(stack.api_url + "/admin/dashboard")
                assert page.url.endswith("/admin/dashboard/login")
                page.fill("#token", ADMIN_TOKEN)
                page.click("button[type=submit]")
                page.wait_for_url("**/admin/dashboard")
                assert ADMIN_TOKEN not in page.url

                for row in providers["providers"]:
                    cells = page.locator(f'tr[data-key="{row["provider"]}/{row["model"]}"]')
                    assert cells.locator("td.attempts").inner_text() == str(row["attempts"])
                    assert cells.locator("td.circuit").inner_text() == "closed"
                    assert cells.locator("td.requests").inner_text() == str(row["requests"])
                    shown = cells.locator("td.success").inner_text().rstrip("%")
                    assert float(shown) == pytest.approx(row["success_rate"] * 100)
                    p50 = row["latency_ms"]["p50"]
                    text = cells.locator("td.latency-p50").inner_text()
                    assert (text == "–") if p50 is None else float(text) == pytest.approx(p50)
                for row in spend["rows"]:
                    user = page.locator(f'tr[data-key="{row["user"]}"]').first
                    assert user.locator("td.cost").inner_text() == row["cost_usd"]
                assert page.locator('[data-id="requests"] .value').inner_text() == str(
                    len(observed.all_ids)
                )
                assert page.locator("svg rect").count() > 0
                page.screenshot(path=str(screenshot), full_page=True)
                colours = _distinct_colours(browser, screenshot)
            finally:
                browser.close()
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert colours > 20, f"the screenshot looks blank ({colours} colours)"


def _distinct_colours(browser: Any, png: Path) -> int:
    """Distinct pixel colours of a PNG, counted by Chromium itself on a blank page."""
    page = browser.new_page()
    data_url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    return int(
        page.evaluate(
            """async (src) => {
                const img = new Image();
                img.src = src;
                await img.decode();
                const canvas = document.createElement('canvas');
                canvas.width = img.width; canvas.height = img.height;
                const ctx = canvas.getContext('2d');
                ctx.drawImage(img, 0, 0);
                const data = ctx.getImageData(0, 0, img.width, img.height).data;
                const seen = new Set();
                for (let i = 0; i < data.length; i += 4 * 7) {
                    seen.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
                }
                return seen.size;
            }""",
            data_url,
        )
    )


class TestHealth:
    """Last in the module: it stops and restarts the worker."""

    def test_503_without_workers_and_200_when_they_return(self, observed: Observed) -> None:
        stack = observed.stack
        status, body = http("GET", stack.api_url + "/health")
        assert status == 200 and body["workers"]["live"] == 1
        assert body["billing"]["unsettled"] == 0 and body["jobs"]["backlog"] == 0

        stack.kill("worker", signal.SIGTERM)  # a stopping worker withdraws its heartbeat
        status, body = http("GET", stack.api_url + "/health")
        assert status == 503
        assert body["status"] == "unavailable" and body["workers"]["live"] == 0

        stack.start_service("worker")
        stack.wait_until(
            lambda: http("GET", stack.api_url + "/health")[0] == 200, 30, "the worker to return"
        )
        _, body = http("GET", stack.api_url + "/health")
        assert body["status"] == "ok" and body["workers"]["live"] == 1


def test_log_prompts_logs_the_text_on_marked_debug_lines(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The debug option an operator turns on to see what was sent and answered."""
    with running_stack(
        tmp_path_factory,
        env_overrides={"LOG_PROMPTS": "true", "LOG_LEVEL": "debug"},
        services=("api", "worker"),
    ) as stack:
        _user, key = stack.new_funded_user("1")
        answer = _client(stack, key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
        )
        stack.wait_until(
            lambda: any(l["event"] == "completion_text" for l in log_lines(stack, "worker")),
            what="the worker's completion_text line",
        )
        prompt = next(l for l in log_lines(stack, "api") if l["event"] == "prompt_text")
        assert prompt["level"] == "debug" and prompt["log_prompts"] is True
        assert prompt["messages"] == [{"role": "user", "content": PROMPT}]
        completion = next(l for l in log_lines(stack, "worker") if l["event"] == "completion_text")
        assert completion["level"] == "debug" and completion["log_prompts"] is True
        assert completion["request_id"] == prompt["request_id"]
        content = answer.choices[0].message.content
        assert content and content in str(completion["completion_text"])
        for service in ("api", "worker"):
            assert key not in (stack.log_dir / f"{service}.log").read_text()
