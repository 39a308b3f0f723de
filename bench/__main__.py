"""`python -m bench` (what `make bench` runs): S1-S7, the budgets, the profile, the report.

    python -m bench                      # everything, about 5 minutes
    python -m bench --scale 0.3          # shorter loads, for a quick look
    python -m bench --only S1,S3 --no-profile
    python -m bench --only S2,F          # S2, and the design floor (bench/floor.py)
    python -m bench --db sqlite          # SQLite instead of a fresh PostgreSQL database

Environment: BENCH_PG_ADMIN_DSN (default postgresql://postgres@127.0.0.1:5432/postgres)
names a PostgreSQL role that may CREATE DATABASE; BENCH_SCALE sets --scale.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import budgets, profiling, report
from bench.procs import repin
from bench.scenarios import Bench, Scale, chat_body
from bench.stack import DEFAULT_PG_ADMIN_DSN, REPO, Stack, StackError, StackOptions

# F: the design floor (bench/floor.py), the required shape with none of the features.
ALL = ("S1", "S2", "S3", "S4", "S5", "S6", "S7", "F")
PROFILED = ("api", "worker", "billing")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(ALL), help="scenarios to run, e.g. S1,S3")
    parser.add_argument(
        "--scale",
        type=float,
        default=float(os.environ.get("BENCH_SCALE") or 1.0),
        help="multiply every load's duration (1.0)",
    )
    parser.add_argument(
        "--db", choices=("postgres", "sqlite"), default=os.environ.get("BENCH_DB", "postgres")
    )
    parser.add_argument(
        "--redis-url", default="", help="an empty Redis to use instead of the bundled one"
    )
    parser.add_argument(
        "--redis-unix",
        action="store_true",
        help="clients reach the bundled Redis over a unix socket, not TCP",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy pass")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO,
        help="the gateway tree to benchmark, e.g. an exported commit (this checkout)",
    )
    parser.add_argument("--log-level", default="info", help="the services' LOG_LEVEL (info)")
    parser.add_argument(
        "--service-python",
        default="",
        help="interpreter for api, worker and billing (make bench: a runtime-only venv)",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the services' logs (~100 MB a run) in the run directory",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a budget fails")
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _run_scenario(name: str, results: dict[str, Any], work: Callable[[], dict[str, Any]]) -> None:
    started = time.monotonic()
    say(f"{name} ...")
    try:
        results[name] = work()
    except Exception as exc:  # noqa: BLE001 - one broken scenario must not lose the others
        traceback.print_exc()
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    say(f"{name} done in {time.monotonic() - started:.0f}s: {_headline(name, results[name])}")


def _headline(name: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    try:
        if name == "S1":
            return f"direct {r['direct']['rps']:,.0f} req/s, gateway {r['gateway']['rps']:,.0f} req/s, errors {r['gateway']['errors']}"
        if name == "S2":
            return ", ".join(
                f"{k}: +{v['added_ms']['p50']:.2f}/+{v['added_ms']['p99']:.2f} ms p50/p99"
                for k, v in r.items()
            )
        if name == "S3":
            g = r["gateway"]
            return f"TTFT +{r['added_ttft_ms']['p50']:.2f}/+{r['added_ttft_ms']['p99']:.2f} ms, fidelity {g['faithful']}/{g['streams']}"
        if name == "S4":
            total = sum(r["rss_after_s1_s3"].get(s, 0) for s in ("api", "worker", "billing"))
            return f"RSS after S1-S3 {total / budgets.MB:.0f} MB; hold {r['gateway']['faithful']}/{r['gateway']['connections']}"
        if name == "S5":
            return ", ".join(f"{k}: +{v['added_ms']['p50']:.2f} ms p50" for k, v in r.items())
        if name == "S6":
            return f"+{r['added_ms']['p50']:.2f}/+{r['added_ms']['p99']:.2f} ms p50/p99, {r['failed_calls_per_request']} failed calls/request"
        if name == "F":
            return (
                f"{r['S1']['rps']:,.0f} req/s, S2 +{r['S2']['added_ms']['p50']:.2f} ms p50, "
                f"S3 TTFT +{r['S3']['added_ttft_ms']['p50']:.2f} ms p50, "
                f"S7 {r['S7']['good_loss']:.0%} lost"
            )
        if name == "S7":
            return f"good {r['good_rps_under_flood']:,.0f} req/s (S1 {r['s1_gateway_rps']:,.0f}), bad {r['gateway']['bad']['rps']:,.0f} req/s"
    except (KeyError, TypeError):
        pass
    return "done"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = [s.strip().upper() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(ALL))
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(tempfile.mkdtemp(prefix=f"gw-bench-{stamp}-"))
    options = StackOptions(
        db=args.db,
        pg_admin_dsn=os.environ.get("BENCH_PG_ADMIN_DSN", DEFAULT_PG_ADMIN_DSN),
        redis_url=args.redis_url,
        redis_unix=args.redis_unix,
        pin=not args.no_pin,
        log_level=args.log_level,
        source=args.source.resolve(),
        service_python=args.service_python or sys.executable,
    )
    scale = Scale(args.scale)
    results: dict[str, Any] = {}
    profile: dict[str, Any] = {}
    say(f"run directory (service logs, removed at the end unless --keep-logs): {run_dir}")
    try:
        with Stack(options, run_dir) as stack:
            say(f"stack up: {stack.describe()['database']}; {stack.pinning.describe()}")
            bench = Bench(stack, scale)
            bench.warm_up()
            if "S1" in wanted:
                _run_scenario("S1", results, bench.s1_throughput)
            if "S2" in wanted:
                _run_scenario("S2", results, bench.s2_added_latency)
            if "S3" in wanted:
                _run_scenario("S3", results, bench.s3_streaming)
            if "S4" in wanted:
                _run_scenario("S4", results, bench.s4_memory)
            if "S5" in wanted:
                _run_scenario("S5", results, bench.s5_large_prompts)
            if "S7" in wanted:
                s1_rps = ((results.get("S1") or {}).get("gateway") or {}).get("rps", 0.0)
                _run_scenario("S7", results, lambda: bench.s7_bad_key_flood(s1_rps))
            if "F" in wanted:
                _run_scenario("F", results, bench.floor)
            if not args.no_profile:
                say("profiling S1 with py-spy ...")
                profile = _profile(bench, stack, args.out, stamp, scale)
            if "S6" in wanted:  # last: it restarts api and worker with a bigger catalog
                _run_scenario("S6", results, bench.s6_failover)
            describe = stack.describe()
    except StackError as exc:
        say(f"could not start the stack: {exc}")
        return 1
    verdicts = budgets.check(results)
    run = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "revision": report.git_revision(args.source.resolve()),
        "machine": report.machine(),
        "stack": describe,
        "scale": args.scale,
        "run_dir": str(run_dir),
        "results": results,
        "profile": profile,
    }
    json_path, md_path = report.write(args.out, stamp, run, verdicts)
    print(md_path.read_text())
    say(f"results: {json_path} and {md_path}")
    if args.keep_logs:
        say(f"service logs kept in {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    failed = [v for v in verdicts if v.passed is False]
    met = sum(1 for v in verdicts if v.passed)
    unmeasured = sum(1 for v in verdicts if v.passed is None)
    say(
        f"budgets: {met} met, {len(failed)} failed, {unmeasured} not measured"
        + (f"; FAILED: {'; '.join(v.scenario + ' ' + v.budget for v in failed)}" if failed else "")
    )
    return 1 if (args.strict and failed) else 0


def _profile(bench: Bench, stack: Stack, out_dir: Path, stamp: str, scale: Scale) -> dict[str, Any]:
    """S1 once per service, with that service alone on the gateway's CPU.

    py-spy samples a process while it is runnable, including while it waits for the
    CPU; with four processes on one CPU that charges one process's time to whatever
    another was doing when it got preempted (mostly socket writes that woke the
    receiver). Alone on the CPU, a service's samples are its own work.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    duration_s = int(scale(10))
    spec = bench.gateway(
        mode="closed",
        body=chat_body("Say hello."),
        connections=64,
        warmup_s=1,
        duration_s=duration_s + 1,
    )
    summary: dict[str, Any] = {}
    loads: dict[str, Any] = {}
    gateway_cpu, driver_cpu = stack.pinning.gateway_cpu, stack.pinning.driver_cpu
    try:
        for alone in PROFILED:
            if gateway_cpu is not None and driver_cpu is not None:
                for name in (*PROFILED, "redis"):
                    repin(stack.procs.pid(name), gateway_cpu if name == alone else driver_cpu)
            found, result = profiling.record(
                {alone: stack.procs.pid(alone)},
                out_dir,
                stamp,
                duration_s=duration_s,
                rate_hz=200,
                cpu=bench.cpu,
                load=lambda: bench.measure(spec),
            )
            summary.update(found)
            loads[alone] = {"rps": result.get("rps"), "errors": result.get("errors")}
    finally:
        if gateway_cpu is not None:
            for name in (*PROFILED, "redis"):
                repin(stack.procs.pid(name), gateway_cpu)
    summary["_load"] = loads
    return summary


if __name__ == "__main__":
    sys.exit(main())
