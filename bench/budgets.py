"""The performance budgets of issue 8, checked against one run's results.

These are benchmark verdicts, printed and recorded; they never fail a test suite. Each
compares the gateway with the direct run of the same invocation where the budget is a
difference, so a noisy machine moves both sides together.

Where the run measured the design floor (scenario F, bench/floor.py), each verdict also
says how the floor fares against the same budget: a budget the floor misses is out of
reach of the gateway's own code on that machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Verdict:
    scenario: str
    budget: str
    measured: str
    passed: bool | None  # None: not measured in this run
    floor: str = ""  # the design floor against the same budget; "" when not measured
    floor_passed: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check(results: dict[str, Any]) -> list[Verdict]:
    verdicts: list[Verdict] = []

    def add(
        scenario: str,
        budget: str,
        value: Any,
        ok: Callable[[Any], Any],
        fmt: str | Callable[[Any], str],
        floor: Any = None,
        floor_fmt: str | Callable[[Any], str] | None = None,
    ) -> None:
        def show(v: Any, f: str | Callable[[Any], str]) -> str:
            return f(v) if callable(f) else f.format(v)

        on_floor: dict[str, Any] = {}
        if floor is not None:
            on_floor = {"floor": show(floor, floor_fmt or fmt), "floor_passed": bool(ok(floor))}
        if value is None:
            verdicts.append(Verdict(scenario, budget, "not measured", None, **on_floor))
            return
        verdicts.append(Verdict(scenario, budget, show(value, fmt), bool(ok(value)), **on_floor))

    add(
        "S1",
        "≥ 1,500 req/s through the gateway, billing keeping up",
        _get(results, "S1", "gateway", "sustained_rps"),
        lambda v: v >= 1500,
        lambda v: f"{v:,.0f} req/s (answered {_get(results, 'S1', 'gateway', 'rps'):,.0f} req/s)",
        _get(results, "F", "S1", "rps"),
        "{:,.0f} req/s",
    )
    add(
        "S1",
        "zero errors",
        _get(results, "S1", "gateway", "errors"),
        lambda v: v == 0,
        "{} errors",
        _get(results, "F", "S1", "errors"),
    )
    add(
        "S2",
        "added p50 ≤ 1 ms at 100 req/s",
        _get(results, "S2", "100rps", "added_ms", "p50"),
        lambda v: v <= 1.0,
        "{:+.2f} ms",
        _get(results, "F", "S2", "added_ms", "p50"),
    )
    add(
        "S2",
        "added p99 ≤ 5 ms at 100 req/s",
        _get(results, "S2", "100rps", "added_ms", "p99"),
        lambda v: v <= 5.0,
        "{:+.2f} ms",
        _get(results, "F", "S2", "added_ms", "p99"),
    )
    add(
        "S3",
        "added TTFT p50 ≤ 3 ms",
        _get(results, "S3", "added_ttft_ms", "p50"),
        lambda v: v <= 3.0,
        "{:+.2f} ms",
        _get(results, "F", "S3", "added_ttft_ms", "p50"),
    )
    add(
        "S3",
        "added TTFT p99 ≤ 15 ms",
        _get(results, "S3", "added_ttft_ms", "p99"),
        lambda v: v <= 15.0,
        "{:+.2f} ms",
        _get(results, "F", "S3", "added_ttft_ms", "p99"),
    )

    def fidelity(streams: dict[str, Any] | None) -> tuple[int, int, int] | None:
        return (
            None
            if streams is None
            else (streams["faithful"], streams["streams"], streams["errors"])
        )

    add(
        "S3",
        "100% chunk fidelity",
        fidelity(_get(results, "S3", "gateway")),
        lambda v: v[1] > 0 and v[0] == v[1] and v[2] == 0,
        "{0[0]}/{0[1]} streams complete and in order",
        fidelity(_get(results, "F", "S3", "floor")),
    )
    rss = _get(results, "S4", "rss_after_s1_s3")
    total = None if rss is None else sum(rss.get(n, 0) for n in ("api", "worker", "billing"))
    add(
        "S4",
        "api + worker + billing < 250 MB RSS after S1–S3",
        total,
        lambda v: v < 250 * MB,
        lambda v: f"{v / MB:.0f} MB",
    )
    hold = _get(results, "S4", "gateway")
    held = (
        None
        if hold is None
        else (hold["faithful"], hold["connections"], hold["errors"], hold["max_open"])
    )
    add(
        "S4",
        "1,000 open streams held by one api process, no errors",
        held,
        lambda v: v[0] == v[1] and v[2] == 0 and v[3] >= v[1],
        "{0[0]}/{0[1]} streams complete, {0[2]} errors, {0[3]} open at once",
    )
    s7 = _s7(_get(results, "S7", "good_loss"), _get(results, "S7", "gateway", "ratio_achieved"))
    floor_loss = _get(results, "F", "S7", "good_loss")
    if floor_loss is not None:
        floor = _s7(floor_loss, _get(results, "F", "S7", "floor", "ratio_achieved"))
        s7 = replace(s7, floor=floor.measured, floor_passed=floor.passed)
    verdicts.append(s7)
    return verdicts


# The flood must reach nearly 10 bad requests per good one for a pass to mean anything.
S7_MIN_RATIO = 9.5


def _s7(loss: float | None, ratio: float | None) -> Verdict:
    """A flood short of its 10× (the load generator's connections all waiting on a
    saturated gateway) can show a failure but not a pass: more bad traffic only costs more."""
    budget = "good traffic loses < 10% of its S1 rate"
    if loss is None:
        return Verdict("S7", budget, "not measured", None)
    shown = f"{loss:.1%} lost" + (f" with {ratio}× bad" if ratio is not None else "")
    if loss >= 0.10:
        return Verdict("S7", budget, shown, False)
    if ratio is None or ratio < S7_MIN_RATIO:
        return Verdict("S7", budget, f"{shown}: the flood fell short of 10×, no verdict", None)
    return Verdict("S7", budget, shown, True)
