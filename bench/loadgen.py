"""Drive the Node load generator (bench/node/loadgen.mjs): one JSON spec in, one result out.

The generator is a separate process pinned beside the fake upstream, so the harness
(Python, mostly asleep) never competes with it for time. See the .mjs file for the modes.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import pinned

LOADGEN = Path(__file__).resolve().parent / "node" / "loadgen.mjs"


class LoadgenError(RuntimeError):
    """The generator crashed or printed no result."""


def run(
    spec: dict[str, Any],
    *,
    cpu: str | None,
    on_marker: Callable[[str], None] | None = None,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Run one load and return its result; `on_marker` hears each stderr line (ALL_OPEN)."""
    proc = subprocess.Popen(
        pinned(["node", str(LOADGEN)], cpu),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stderr_lines: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            stderr_lines.append(line)
            if on_marker is not None:
                on_marker(line)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    watchdog = threading.Timer(timeout_s, proc.kill)
    watchdog.start()
    try:
        out = proc.stdout.read()
        proc.wait()
    finally:
        watchdog.cancel()
    reader.join(timeout=5)
    if proc.returncode != 0 or not out.strip():
        tail = "\n".join(stderr_lines[-20:])
        raise LoadgenError(f"load generator failed (exit {proc.returncode}):\n{tail}")
    return dict(json.loads(out))
