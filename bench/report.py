"""Results on disk: bench-results/<timestamp>.json (everything) and .md (the tables)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.budgets import MB, Verdict

CPU_NOTE = (
    "Per request answered (warm-up included). gateway_total = api + worker + billing + redis, "
    "the processes pinned to the gateway's CPU; 1e6 / gateway_total is the rate one whole core "
    "could sustain; (sys) is the kernel's share (syscalls, loopback TCP). postgres counts this "
    "run's database backends (not pinned). 'ours / busy': the share of the gateway's CPU our "
    "processes used / the share anything used (the machine may be shared). A driver CPU near "
    "100% with a low gateway share would mean the load generator limited the run."
)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    try:
        node = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        node = "missing"
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "node": node,
    }


def git_revision(repo: Path) -> str:
    """The commit benchmarked; an exported tree (git archive) may name it in a REVISION file."""
    label = repo / "REVISION"
    if label.is_file():
        return label.read_text().strip()
    done = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    rev = done.stdout.strip() or "unknown"
    return rev + ("+dirty" if dirty.stdout.strip() else "")


def _ms(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}"


def _delta(value: Any) -> str:
    return "–" if value is None else f"{value:+.2f}"


def _row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = [_row(header), _row("---" for _ in header)]
    lines.extend(_row(r) for r in rows)
    return lines


def _cpu_cell(per_request: dict[str, float], name: str) -> str:
    total = per_request.get(name, 0)
    kernel = per_request.get(f"{name}_sys")
    if kernel is None or not total:
        return f"{total:,.0f}"
    return f"{total:,.0f} ({kernel / total:.0%} sys)"


def _pct(stats: dict[str, Any] | None, q: str) -> Any:
    return None if not stats else stats.get(q)


def markdown(run: dict[str, Any], verdicts: list[Verdict]) -> str:
    r = run["results"]
    m = run["machine"]
    lines = [
        f"# Gateway benchmark — {run['started_at']}",
        "",
        (
            f"Machine: {m['cpus']} × {m['cpu']}, {m['memory_gib']} GiB, Linux {m['kernel']}, "
            f"Python {m['python']}, Node {m['node']}. Revision {run['revision']}."
        ),
        (
            f"Stack: {run['stack']['database']}; Redis: {run['stack']['redis']}; "
            f"{run['stack']['pinning']}. Scale {run['scale']}."
        ),
        "",
        "## Budgets",
        "",
    ]
    with_floor = any(v.floor for v in verdicts)
    lines += _table(
        ["Scenario", "Budget", "Measured", "Result", *(["Design floor"] if with_floor else [])],
        (
            [
                v.scenario,
                v.budget,
                v.measured,
                _verdict(v.passed),
                *(
                    [f"{v.floor} {_verdict(v.floor_passed)}" if v.floor else ""]
                    if with_floor
                    else []
                ),
            ]
            for v in verdicts
        ),
    )
    lines += ["", "## Direct vs through the gateway", ""]
    rows: list[list[Any]] = []
    s1 = r.get("S1")
    if s1:
        d, g = s1["direct"], s1["gateway"]
        rows.append(
            [
                "S1 closed loop, 64 conns",
                "req/s",
                f"{d['rps']:,.0f}",
                f"{g['rps']:,.0f}",
                f"× {s1['throughput_ratio']}",
            ]
        )
        for q in ("p50", "p99"):
            rows.append(
                [
                    "S1",
                    f"latency {q} ms",
                    _ms(d["latency_ms"].get(q)),
                    _ms(g["latency_ms"].get(q)),
                    _delta(s1["added_latency_ms"].get(q)),
                ]
            )
        rows.append(["S1", "errors", d["errors"], g["errors"], ""])
        rows.append(
            [
                "S1",
                "req/s sustained (billing settled)",
                "",
                f"{g.get('sustained_rps', 0):,.0f}",
                (
                    f"billing {g.get('billing_backlog_at_end', 0):,} events behind at the end, "
                    f"{g.get('billing_drain_s')} s to catch up"
                ),
            ]
        )
        total_us = g.get("cpu_us_per_request", {}).get("gateway_total")
        if total_us:
            rows.append(
                [
                    "S1",
                    "gateway CPU per request (µs)",
                    "",
                    f"{total_us:,.0f}",
                    f"ceiling {1e6 / total_us:,.0f} req/s on one core",
                ]
            )
    for rate in ("100rps", "20rps"):
        s2 = (r.get("S2") or {}).get(rate)
        if s2:
            for q in ("p50", "p90", "p99"):
                rows.append(
                    [
                        f"S2 open loop {rate[:-3]} req/s",
                        f"latency {q} ms",
                        _ms(s2["direct"]["latency_ms"].get(q)),
                        _ms(s2["gateway"]["latency_ms"].get(q)),
                        _delta(s2["added_ms"].get(q)),
                    ]
                )
            rows.append(
                [
                    f"S2 {rate[:-3]} req/s",
                    "errors",
                    s2["direct"]["errors"],
                    s2["gateway"]["errors"],
                    "",
                ]
            )
    s3 = r.get("S3")
    if s3:
        d, g = s3["direct"], s3["gateway"]
        for metric, key, added in (
            ("TTFT", "ttft_ms", "added_ttft_ms"),
            ("total", "total_ms", "added_total_ms"),
            ("chunk gap", "gap_ms", "added_gap_ms"),
        ):
            for q in ("p50", "p99"):
                rows.append(
                    [
                        "S3 50 streams × 20 chunks",
                        f"{metric} {q} ms",
                        _ms(d[key].get(q)),
                        _ms(g[key].get(q)),
                        _delta(s3[added].get(q)),
                    ]
                )
        rows.append(
            [
                "S3",
                "chunk fidelity",
                f"{d['faithful']}/{d['streams']}",
                f"{g['faithful']}/{g['streams']}",
                "",
            ]
        )
    s4 = r.get("S4")
    if s4:
        d, g = s4["direct"], s4["gateway"]
        rows.append(
            [
                "S4 1,000 open streams",
                "complete & in order",
                f"{d['faithful']}/{d['connections']}",
                f"{g['faithful']}/{g['connections']}",
                "",
            ]
        )
        rows.append(
            [
                "S4",
                "TTFT p50 / p99 ms",
                f"{_ms(d['ttft_ms'].get('p50'))} / {_ms(d['ttft_ms'].get('p99'))}",
                f"{_ms(g['ttft_ms'].get('p50'))} / {_ms(g['ttft_ms'].get('p99'))}",
                "",
            ]
        )
    for size, s5 in (r.get("S5") or {}).items():
        for q in ("p50", "p99"):
            rows.append(
                [
                    f"S5 {size}-token prompt ({s5['request_bytes'] // 1024} KiB)",
                    f"latency {q} ms",
                    _ms(s5["direct"]["latency_ms"].get(q)),
                    _ms(s5["gateway"]["latency_ms"].get(q)),
                    _delta(s5["added_ms"].get(q)),
                ]
            )
    s6 = r.get("S6")
    if s6:
        for q in ("p50", "p99"):
            rows.append(
                [
                    "S6 failover (500 then OK), 20 req/s",
                    f"latency {q} ms",
                    _ms(s6["direct"]["latency_ms"].get(q)),
                    _ms(s6["gateway"]["latency_ms"].get(q)),
                    _delta(s6["added_ms"].get(q)),
                ]
            )
        failed = s6["failed_calls_per_request"]
        how = "retried there, then fell back" if failed >= 1.5 else "fell back at once"
        rows.append(["S6", "500s from the first provider per request", "", f"{failed}", how])
    s7 = r.get("S7")
    if s7:
        d, g = s7["direct"], s7["gateway"]
        rows.append(
            [
                "S7 bad-key flood (10× bad)",
                "good req/s",
                f"{d['good']['rps']:,.0f}",
                f"{g['good']['rps']:,.0f}",
                f"S1: {s7['s1_gateway_rps']:,.0f}",
            ]
        )
        rows.append(
            [
                "S7",
                "bad req/s (ratio)",
                f"{d['bad']['rps']:,.0f} ({d['ratio_achieved']}×)",
                f"{g['bad']['rps']:,.0f} ({g['ratio_achieved']}×)",
                "",
            ]
        )
        rows.append(["S7", "good errors", d["good"]["errors"], g["good"]["errors"], ""])
        alone = s7.get("gateway_bad_keys_only")
        if alone:
            per = alone.get("cpu_us_per_request", {})
            rows.append(
                [
                    "S7 bad keys alone, 32 conns",
                    "refusals/s (401/429); CPU per refusal",
                    "",
                    f"{alone['rps']:,.0f}",
                    f"api {per.get('api', 0):,.0f} µs, postgres {per.get('postgres', 0):,.0f} µs",
                ]
            )
    lines += _table(["Scenario", "Metric", "Direct", "Gateway", "Δ / ratio"], rows)
    if r.get("F") and "error" not in r["F"]:
        lines += _floor_section(r["F"], r)

    if s4:
        lines += ["", "## Memory (RSS, MB)", ""]
        services = ("api", "worker", "billing")
        phases = (
            ("idle", s4["rss_idle"]),
            ("after S1–S3", s4["rss_after_s1_s3"]),
            ("1,000 streams open", s4["rss_all_streams_open"]),
            ("peak during hold", s4["rss_peak_during_hold"]),
        )
        lines += _table(
            ["Phase", *services, "total"],
            (
                [
                    label,
                    *(f"{rss.get(s, 0) / MB:.0f}" for s in services),
                    f"{sum(rss.get(s, 0) for s in services) / MB:.0f}",
                ]
                for label, rss in phases
            ),
        )

    lines += ["", "## CPU per request (µs), gateway runs", ""]
    procs = ("api", "worker", "billing", "redis", "postgres", "gateway_total", "fake", "loadgen")
    gw_cpu, drv_cpu = run["stack"].get("gateway_cpu"), run["stack"].get("driver_cpu")
    cpu_rows = []
    for label, res in (
        ("S1", (s1 or {}).get("gateway")),
        ("S2 100 req/s", ((r.get("S2") or {}).get("100rps") or {}).get("gateway")),
        ("S3 (per stream)", (s3 or {}).get("gateway")),
        ("S6", (s6 or {}).get("gateway")),
        ("S7 (per good request)", (s7 or {}).get("gateway")),
    ):
        if res and "cpu_us_per_request" in res:
            busy = res.get("cpu_busy_share", {})
            per = res["cpu_us_per_request"]
            cpu_rows.append(
                [
                    label,
                    *(_cpu_cell(per, p) for p in procs),
                    f"{res.get('gateway_share_of_cpu', 0):.0%} / {busy.get(gw_cpu, 0):.0%}"
                    if gw_cpu
                    else "–",
                    f"{busy.get(drv_cpu, 0):.0%}" if drv_cpu else "–",
                    (res.get("redis_calls_per_request") or {}).get("total", "–"),
                ]
            )
    lines += _table(
        ["Run", *procs, "gateway CPU: ours / busy", "driver CPU busy", "Redis cmds/req"], cpu_rows
    )
    lines += ["", CPU_NOTE]
    calls = ((s1 or {}).get("gateway") or {}).get("redis_calls_per_request")
    if calls:
        listed = ", ".join(f"{name} {n}" for name, n in calls.items() if name != "total")
        lines += ["", f"Redis commands per S1 request ({calls['total']}): {listed}."]
    prof = run.get("profile")
    if prof:
        lines += _profile_section(prof)
    return "\n".join(lines) + "\n"


def _verdict(passed: bool | None) -> str:
    return "PASS" if passed else ("FAIL" if passed is False else "n/a")


FLOOR_NOTE = (
    "The design floor (`bench/floor.py`) is the required shape with none of the features: "
    "an aiohttp edge that checks one key and queues the body on a Redis stream, a worker "
    "that forwards it untouched over a pooled aiohttp session and publishes the answer on "
    "the edge's pub/sub channel. No accounts, wallets, rate limits, validation, "
    "translation, fallback, billing, logs or metrics. The proxy is that edge calling the "
    "upstream itself, with no queue. Both run on the gateway's CPU with the same Redis "
    "and fake upstream, in the same invocation (S2 and S3 with their own direct runs). "
    "Proxy to floor is what the queue's hops cost; floor to gateway, what the features "
    "cost. A budget the floor misses by far is beyond trimming the gateway's features."
)


def _cpu_split(per: dict[str, float], names: Sequence[str]) -> str:
    parts = " + ".join(f"{n} {per.get(n, 0):,.0f}" for n in names)
    return f"{per.get('gateway_total', 0):,.0f} ({parts})"


def _floor_section(f: dict[str, Any], r: dict[str, Any]) -> list[str]:
    """Proxy (no queue), floor (the shape, no features) and gateway, metric by metric."""
    proxy = f.get("proxy") or {}
    s7 = r.get("S7") or {}
    gateway = {
        "S1": (r.get("S1") or {}).get("gateway") or {},
        "S2": (r.get("S2") or {}).get("100rps") or {},
        "S3": r.get("S3") or {},
        "S7": s7,
        "refusals": s7.get("gateway_bad_keys_only") or {},
    }
    # Each run's results, by the name its S2/S3 entries file its own measurement under.
    runs = {"proxy": proxy, "floor": f, "gateway": gateway}
    shares = {
        "proxy": ("floor-proxy",),
        "floor": ("floor-edge", "floor-worker", "redis"),
        "gateway": ("api", "worker", "billing", "redis"),
    }
    refuser = {"floor": "floor-edge", "gateway": "api"}

    def cells(value: Callable[[dict[str, Any], str], str]) -> list[str]:
        """One cell per run; "–" where this invocation did not measure it."""
        out = []
        for name, data in runs.items():
            try:
                out.append(value(data, name))
            except (KeyError, TypeError):
                out.append("–")
        return out

    rows: list[list[Any]] = [
        ["S1 closed loop, 64 conns", "req/s", *cells(lambda d, _: f"{d['S1']['rps']:,.0f}")],
        [
            "S1",
            "CPU per request (µs)",
            *cells(lambda d, name: _cpu_split(d["S1"]["cpu_us_per_request"], shares[name])),
        ],
    ]
    for q in ("p50", "p99"):
        rows.append(
            [
                "S2 100 req/s",
                f"added latency {q} ms",
                *cells(lambda d, _, q=q: _delta(d["S2"]["added_ms"][q])),
            ]
        )
    for q in ("p50", "p99"):
        rows.append(
            [
                "S3 50 streams",
                f"added TTFT {q} ms",
                *cells(lambda d, _, q=q: _delta(d["S3"]["added_ttft_ms"][q])),
            ]
        )
    rows.append(
        [
            "S3",
            "CPU per stream (µs)",
            *cells(lambda d, label: _num(d["S3"][label]["cpu_us_per_request"]["gateway_total"])),
        ]
    )
    rows.append(
        [
            "S7 10× bad-key flood",
            "good traffic lost (bad/good reached)",
            *cells(
                lambda d, name: f"{d['S7']['good_loss']:.0%} ({d['S7'][name]['ratio_achieved']}×)"
            ),
        ]
    )
    rows.append(
        [
            "Bad keys alone, 32 conns",
            "CPU per refusal (µs)",
            *cells(
                lambda d, name: (
                    f"{d['refusals']['cpu_us_per_request'][refuser[name]]:,.0f} ({refuser[name].removeprefix('floor-')})"
                )
            ),
        ]
    )
    lines = ["", "## Design floor", "", FLOOR_NOTE, ""]
    return lines + _table(["Scenario", "Metric", "Proxy (no queue)", "Floor", "Gateway"], rows)


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _profile_section(prof: dict[str, Any]) -> list[str]:
    loads = prof.get("_load") or {}
    passes = ", ".join(f"{name} pass {v.get('rps')} req/s" for name, v in loads.items())
    note = (
        "Each service profiled alone on the gateway's CPU (the other services moved to the "
        f"driver CPU for that pass), so its samples are its own work. S1 load: {passes}. "
        "Percent of the service's busy samples; `Runner.run` is time in C under the event "
        "loop (uvloop, asyncpg's protocol, hiredis) that has no Python frame."
    )
    lines = ["", "## Profile of S1 (py-spy)", "", note, ""]
    for name, info in prof.items():
        if name.startswith("_"):
            continue
        if "error" in info:
            lines += [f"- {name}: {info['error']}", ""]
            continue
        packages = ", ".join(f"{pkg} {pct:.0f}%" for pkg, pct in info["self_by_package"][:8])
        heading = f"**{name}** ({info['samples']} samples, flame graph `{info['svg']}`)."
        lines += [f"{heading} Self time by package: {packages}.", ""]
        own = info["top_inclusive_own_code"]
        rows = []
        for i, (function, pct) in enumerate(info["top_self"][:12]):
            mine = own[i] if i < len(own) else None
            rows.append(
                [
                    f"{pct:.1f}",
                    f"`{function}`",
                    f"{mine[1]:.1f}" if mine else "",
                    f"`{mine[0]}`" if mine else "",
                ]
            )
        lines += _table(["self %", "function", "incl. %", "gateway function"], rows)
        lines.append("")
    return lines


def write(
    out_dir: Path, stamp: str, run: dict[str, Any], verdicts: list[Verdict]
) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    run = {**run, "budgets": [v.as_dict() for v in verdicts]}
    json_path = out_dir / f"{stamp}.json"
    md_path = out_dir / f"{stamp}.md"
    json_path.write_text(json.dumps(run, indent=2, default=str))
    md_path.write_text(markdown(run, verdicts))
    return json_path, md_path


__all__ = ["MB", "git_revision", "machine", "markdown", "write"]
