"""The benchmark's pure parts: profile ranking, budget verdicts, the markdown report."""

from __future__ import annotations

from typing import Any

from bench import budgets, report
from bench.profiling import summarise
from bench.scenarios import prompt_of
from shared.tokens import estimate_text_tokens

MB = budgets.MB


def latency(p50: float, p99: float) -> dict[str, float]:
    return {"count": 100, "mean": p50, "p50": p50, "p90": p50, "p99": p99, "max": p99}


def results(*, rps: float, added_p50: float, loss: float, rss_mb: int) -> dict[str, Any]:
    stream = {
        "faithful": 50,
        "streams": 50,
        "errors": 0,
        "connections": 50,
        "max_open": 50,
        "ttft_ms": latency(50, 55),
        "total_ms": latency(150, 160),
        "gap_ms": latency(5, 6),
    }
    hold = {**stream, "faithful": 1000, "streams": 1000, "connections": 1000, "max_open": 1000}
    closed = {"rps": rps, "errors": 0, "latency_ms": latency(3, 9)}
    return {
        "S1": {
            "direct": {**closed, "rps": 20_000.0},
            "gateway": {
                **closed,
                "sustained_rps": rps,
                "billing_backlog_at_end": 0,
                "billing_drain_s": 0.0,
                "cpu_us_per_request": {"gateway_total": 500.0, "api": 100.0, "api_sys": 10.0},
            },
            "throughput_ratio": 0.1,
            "added_latency_ms": {"p50": 1.0, "p99": 2.0},
        },
        "S2": {
            "100rps": {
                "direct": {"errors": 0, "latency_ms": latency(1, 2)},
                "gateway": {"errors": 0, "latency_ms": latency(1 + added_p50, 4)},
                "added_ms": {"p50": added_p50, "p90": 1.0, "p99": 2.0},
            }
        },
        "S3": {
            "direct": stream,
            "gateway": stream,
            "added_ttft_ms": {"p50": 1.0, "p99": 20.0},
            "added_total_ms": {"p50": 1.0, "p99": 2.0},
            "added_gap_ms": {"p50": 0.0, "p99": 1.0},
        },
        "S4": {
            "rss_idle": {"api": 50 * MB, "worker": 50 * MB, "billing": 50 * MB},
            "rss_after_s1_s3": {"api": rss_mb * MB, "worker": 0, "billing": 0},
            "rss_all_streams_open": {"api": 1, "worker": 1, "billing": 1},
            "rss_peak_during_hold": {"api": 1, "worker": 1, "billing": 1},
            "direct": hold,
            "gateway": hold,
        },
        "S7": {
            "direct": {
                "good": {"rps": 1.0, "errors": 0},
                "bad": {"rps": 10.0},
                "ratio_achieved": 10,
            },
            "gateway": {
                "good": {"rps": 1.0, "errors": 0},
                "bad": {"rps": 10.0},
                "ratio_achieved": 10,
            },
            "s1_gateway_rps": rps,
            "good_loss": loss,
        },
    }


class TestBudgets:
    def test_each_budget_is_judged_on_its_own_number(self) -> None:
        verdicts = {
            v.budget: v
            for v in budgets.check(results(rps=1600, added_p50=0.5, loss=0.05, rss_mb=200))
        }
        assert verdicts["≥ 1,500 req/s through the gateway, billing keeping up"].passed is True
        assert verdicts["added p50 ≤ 1 ms at 100 req/s"].passed is True
        assert verdicts["added TTFT p99 ≤ 15 ms"].passed is False  # 20 ms in the fixture
        assert verdicts["api + worker + billing < 250 MB RSS after S1–S3"].measured == "200 MB"
        assert verdicts["good traffic loses < 10% of its S1 rate"].passed is True

    def test_failures_and_missing_scenarios(self) -> None:
        data = results(rps=900, added_p50=1.5, loss=0.5, rss_mb=300)
        del data["S7"]
        verdicts = {v.budget: v for v in budgets.check(data)}
        assert verdicts["≥ 1,500 req/s through the gateway, billing keeping up"].passed is False
        assert verdicts["added p50 ≤ 1 ms at 100 req/s"].passed is False
        assert verdicts["api + worker + billing < 250 MB RSS after S1–S3"].passed is False
        assert verdicts["good traffic loses < 10% of its S1 rate"].passed is None
        assert verdicts["good traffic loses < 10% of its S1 rate"].measured == "not measured"

    def test_a_flood_short_of_ten_times_can_fail_but_not_pass(self) -> None:
        budget = "good traffic loses < 10% of its S1 rate"

        def s7(loss: float, ratio: float) -> budgets.Verdict:
            data = results(rps=1600, added_p50=0.5, loss=loss, rss_mb=200)
            data["S7"]["gateway"]["ratio_achieved"] = ratio
            return {v.budget: v for v in budgets.check(data)}[budget]

        assert s7(0.05, 10).passed is True
        assert s7(0.05, 10).measured == "5.0% lost with 10× bad"
        short = s7(0.05, 2.1)
        assert short.passed is None and "fell short of 10×" in short.measured
        assert s7(0.54, 2.1).passed is False
        assert s7(0.54, 2.1).measured == "54.0% lost with 2.1× bad"


class TestMarkdown:
    def test_the_table_shows_verdicts_and_differences(self) -> None:
        data = results(rps=1600, added_p50=0.5, loss=0.05, rss_mb=200)
        run = {
            "started_at": "2026-01-01T00:00:00+00:00",
            "revision": "abc1234",
            "machine": {
                "cpus": 2,
                "cpu": "Test CPU",
                "memory_gib": 4,
                "kernel": "6",
                "python": "3.11",
                "node": "v20",
            },
            "stack": {
                "database": "postgresql",
                "redis": "bundled",
                "pinning": "pinned",
                "gateway_cpu": "cpu1",
            },
            "scale": 1.0,
            "results": data,
            "profile": {
                "_load": {"api": {"rps": 800.0, "errors": 0}},
                "api": {
                    "samples": 10,
                    "svg": "x.svg",
                    "top_self": [
                        ["run (stdlib/asyncio/runners.py)", 60.0],
                        ["handler (services/api/x.py)", 40.0],
                    ],
                    "top_inclusive_own_code": [["handler (services/api/x.py)", 40.0]],
                    "self_by_package": [["asyncio", 60.0], ["services/api", 40.0]],
                },
            },
        }
        text = report.markdown(run, budgets.check(data))
        assert (
            "| S1 | ≥ 1,500 req/s through the gateway, billing keeping up | 1,600 req/s (answered 1,600 req/s) | PASS |"
            in text
        )
        assert "| S3 | added TTFT p99 ≤ 15 ms | +20.00 ms | FAIL |" in text
        assert "ceiling 2,000 req/s on one core" in text  # 1e6 / 500 µs
        assert "100 (10% sys)" in text
        assert (
            "| 60.0 | `run (stdlib/asyncio/runners.py)` | 40.0 | `handler (services/api/x.py)` |"
            in text
        )
        assert "| 40.0 | `handler (services/api/x.py)` |  |  |" in text
        assert "Self time by package: asyncio 60%, services/api 40%." in text
        assert "api pass 800.0 req/s" in text


class TestProfileSummary:
    def test_ranks_self_and_inclusive_time(self) -> None:
        main = "process 1;main (/work/main/services/cli.py:10)"
        handle = "handle (/work/main/services/api/app.py"
        collapsed = (
            f"{main};{handle}:5);dumps (/x/lib/python3.11/site-packages/orjson/__init__.py:1) 30\n"
            f"{main};{handle}:7) 10\n"
            f"{main};run (/x/lib/python3.11/asyncio/runners.py:3) 60\n"
        )
        summary = summarise(collapsed)
        assert summary["samples"] == 100
        assert summary["top_self"][0] == ("run (stdlib/asyncio/runners.py)", 60.0)
        assert ("dumps (orjson/__init__.py)", 30.0) in summary["top_self"]
        inclusive = dict(summary["top_inclusive_own_code"])
        # Two lines of the same function count once per stack, never twice.
        assert inclusive["handle (services/api/app.py)"] == 40.0
        # Entry points every sample passes through are left out of the ranking.
        assert "main (services/cli.py)" not in inclusive

    def test_empty_input(self) -> None:
        assert summarise("")["samples"] == 0


def test_prompts_have_the_size_the_gateway_estimates() -> None:
    for tokens in (1_000, 100_000):
        estimated = estimate_text_tokens(prompt_of(tokens))
        assert tokens <= estimated <= tokens * 1.01
