"""Where the gateway's CPU goes under S1: py-spy on the api, worker and billing processes.

py-spy samples from outside the process (`--nonblocking`: no pauses), so the profiled
code is the code that runs in production. Each process gets two recorders at once: a
flame graph (SVG, to look at) and collapsed stacks (to rank functions here). Idle time
in the event loop's poll is not sampled, so percentages are of the busy time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import pinned

# Frames every sample passes through (process start, the service's main loop): ranking
# them tells nothing.
ENTRY_POINTS = (
    "<module> (",
    "main (",
    "cmd_run (",
    "run_service (",
    "_run_until_signal (",
    "run_api (",
    "run_worker (",
    "run_billing (",
    "Worker.run (",
    "BillingConsumer.run (",
)


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def record(
    pids: dict[str, int],
    out_dir: Path,
    stamp: str,
    *,
    duration_s: int,
    rate_hz: int,
    cpu: str | None,
    load: Callable[[], dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Profile `pids` while `load()` runs; returns (per-process summary, load result)."""
    exe = py_spy()
    if exe is None:
        return {
            name: {"error": "py-spy is not installed (pip install py-spy)"} for name in pids
        }, load()
    recorders: list[tuple[str, str, subprocess.Popen[bytes], Path]] = []
    for name, pid in pids.items():
        for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt")):
            path = out_dir / f"{stamp}-s1-{name}.{suffix}"
            argv = [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate_hz),
                "--duration",
                str(duration_s),
                "--nonblocking",
                "--format",
                fmt,
                "--output",
                str(path),
            ]
            proc = subprocess.Popen(
                pinned(argv, cpu), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            recorders.append((name, fmt, proc, path))
    result = load()
    summary: dict[str, Any] = {}
    for name, fmt, proc, path in recorders:
        try:
            _out, err = proc.communicate(timeout=duration_s + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            summary[name] = {"error": "py-spy did not finish"}
            continue
        if proc.returncode != 0 or not path.exists():
            summary.setdefault(
                name, {"error": f"py-spy failed: {err.decode(errors='replace')[-300:]}"}
            )
            continue
        entry = summary.setdefault(name, {})
        if fmt == "flamegraph":
            entry["svg"] = path.name
        else:
            entry.update(summarise(path.read_text()))
            entry["collapsed"] = path.name
    return summary, result


def _function(frame: str) -> str:
    """`handler (services/api/routes/chat.py:42)` -> `handler (services/api/routes/chat.py)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3":
                path = "stdlib/" + path.split("/", 1)[-1]
            break
    else:
        path = path.split("/work/main/", 1)[-1] if "/work/main/" in path else path
    return f"{name} ({path})" if path else name


def _package(function: str) -> str:
    path = function.rpartition(" (")[2].rstrip(")")
    head = path.split("/", 1)[0]
    if head in {"services", "shared"}:
        return "/".join(path.split("/")[:2])
    return head.removesuffix(".py") or "?"


def summarise(collapsed: str, top: int = 25) -> dict[str, Any]:
    """Rank functions by self and inclusive share of the busy samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            _function(f)
            for f in stack.split(";")
            if f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for function in set(frames):
            inclusive[function] += count
    if not total:
        return {"samples": 0, "top_self": [], "top_inclusive_own_code": [], "self_by_package": []}

    def pct(
        counter: Counter[str], keep: Callable[[str], bool] = lambda _f: True
    ) -> list[tuple[str, float]]:
        ranked = [(f, round(100 * c / total, 2)) for f, c in counter.most_common() if keep(f)]
        return ranked[:top]

    def is_own(function: str) -> bool:
        mine = "(services/" in function or "(shared/" in function
        return (
            mine and not function.startswith(ENTRY_POINTS) and "(services/cli.py)" not in function
        )

    return {
        "samples": total,
        "top_self": pct(own),
        "top_inclusive_own_code": pct(inclusive, is_own),
        "self_by_package": pct(packages),
    }
