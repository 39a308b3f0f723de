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


def with_floor(data: dict[str, Any]) -> dict[str, Any]:
    """`data` plus a design floor run: faster than the gateway, yet missing S2 and S7."""

    def run(rps: float, total_us: float, **extra: Any) -> dict[str, Any]:
        return {"rps": rps, "errors": 0, "cpu_us_per_request": {"gateway_total": total_us, **extra}}

    stream = {**data["S3"]["gateway"], "cpu_us_per_request": {"gateway_total": 3000.0}}
    proxy_stream = {**stream, "cpu_us_per_request": {"gateway_total": 1100.0}}
    return {
        **data,
        "F": {
            "S1": run(2400, 420.0, **{"floor-edge": 170.0, "floor-worker": 210.0, "redis": 40.0}),
            "S2": {"added_ms": {"p50": 2.0, "p99": 4.8}},
            "S3": {"floor": stream, "added_ttft_ms": {"p50": 8.0, "p99": 12.0}},
            "S7": {"floor": {"ratio_achieved": 9.49}, "good_loss": 0.67},
            "refusals": run(5000, 60.0, **{"floor-edge": 54.0}),
            "proxy": {
                "S1": run(4800, 210.0, **{"floor-proxy": 210.0}),
                "S2": {"added_ms": {"p50": 1.3, "p99": 3.7}},
                "S3": {"proxy": proxy_stream, "added_ttft_ms": {"p50": 0.8, "p99": 2.2}},
            },
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

    def test_the_design_floor_is_judged_against_the_same_budgets(self) -> None:
        data = with_floor(results(rps=900, added_p50=1.5, loss=0.5, rss_mb=200))
        verdicts = {v.budget: v for v in budgets.check(data)}
        rate = verdicts["≥ 1,500 req/s through the gateway, billing keeping up"]
        assert (rate.passed, rate.floor, rate.floor_passed) == (False, "2,400 req/s", True)
        p50 = verdicts["added p50 ≤ 1 ms at 100 req/s"]
        assert (p50.floor, p50.floor_passed) == ("+2.00 ms", False)
        assert verdicts["added TTFT p99 ≤ 15 ms"].floor_passed is True
        fidelity = verdicts["100% chunk fidelity"]
        assert fidelity.floor == "50/50 streams complete and in order" and fidelity.floor_passed
        flood = verdicts["good traffic loses < 10% of its S1 rate"]
        assert (flood.floor, flood.floor_passed) == ("67.0% lost with 9.49× bad", False)
        # No floor for memory: the floor holds no state worth weighing.
        assert verdicts["api + worker + billing < 250 MB RSS after S1–S3"].floor == ""

    def test_without_a_floor_run_no_floor_is_claimed(self) -> None:
        for v in budgets.check(results(rps=1600, added_p50=0.5, loss=0.05, rss_mb=200)):
            assert v.floor == "" and v.floor_passed is None

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


def run_of(data: dict[str, Any]) -> dict[str, Any]:
    return {
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


class TestMarkdown:
    def test_the_table_shows_verdicts_and_differences(self) -> None:
        data = results(rps=1600, added_p50=0.5, loss=0.05, rss_mb=200)
        run = run_of(data)
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
        assert "Design floor" not in text

    def test_the_floor_section_sets_proxy_floor_and_gateway_side_by_side(self) -> None:
        data = with_floor(results(rps=900, added_p50=1.5, loss=0.5, rss_mb=200))
        text = report.markdown(run_of(data), budgets.check(data))
        assert "| S2 | added p50 ≤ 1 ms at 100 req/s | +1.50 ms | FAIL | +2.00 ms FAIL |" in text
        assert "| S4 | api + worker + billing < 250 MB RSS after S1–S3 | 200 MB | PASS |  |" in text
        assert "## Design floor" in text
        assert "| S1 closed loop, 64 conns | req/s | 4,800 | 2,400 | 900 |" in text
        assert (
            "| S1 | CPU per request (µs) | 210 (floor-proxy 210) "
            "| 420 (floor-edge 170 + floor-worker 210 + redis 40) "
            "| 500 (api 100 + worker 0 + billing 0 + redis 0) |"
        ) in text
        assert "| S2 100 req/s | added latency p50 ms | +1.30 | +2.00 | +1.50 |" in text
        assert "| S3 50 streams | added TTFT p99 ms | +2.20 | +12.00 | +20.00 |" in text
        assert "| S3 | CPU per stream (µs) | 1,100 | 3,000 | – |" in text
        assert (
            "| S7 10× bad-key flood | good traffic lost (bad/good reached) | – | 67% (9.49×) | 50% (10×) |"
            in text
        )
        assert "| Bad keys alone, 32 conns | CPU per refusal (µs) | – | 54 (edge) | – |" in text

    def test_a_floor_run_without_the_gateways_s1_leaves_those_cells_empty(self) -> None:
        data = with_floor(results(rps=900, added_p50=1.5, loss=0.5, rss_mb=200))
        del data["S1"], data["S7"]  # `--only S3,F`
        text = report.markdown(run_of(data), budgets.check(data))
        assert "| S1 closed loop, 64 conns | req/s | 4,800 | 2,400 | – |" in text
        assert "| 420 (floor-edge 170 + floor-worker 210 + redis 40) | – |" in text


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
