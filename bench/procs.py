"""Child processes of a benchmark run: started pinned to a CPU, measured from /proc, stopped.

Memory is the resident set (VmRSS) and CPU is utime + stime, both read from /proc, so
the numbers are what the kernel charged each process, with no sampling in between.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which CPU runs the gateway and which runs the load generator and fake upstream."""

    gateway_cpu: str | None
    driver_cpu: str | None

    @classmethod
    def detect(cls, enabled: bool = True) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled or len(cpus) < 2 or shutil.which("taskset") is None:
            return cls(None, None)
        # The driver takes the first CPU (it also fields most interrupts), the gateway the second.
        return cls(gateway_cpu=str(cpus[1]), driver_cpu=str(cpus[0]))

    def describe(self) -> str:
        if self.gateway_cpu is None:
            return "not pinned (fewer than 2 CPUs or taskset missing)"
        return f"gateway on CPU {self.gateway_cpu}; load generator and fake upstream on CPU {self.driver_cpu}"


def pinned(argv: Sequence[str], cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu is not None else list(argv)


def repin(pid: int, cpu: str) -> None:
    """Move a running process (every thread of it) to `cpu`."""
    subprocess.run(["taskset", "-apc", cpu, str(pid)], check=True, capture_output=True)


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds charged to one process so far; system time is the
    kernel's work on its behalf: syscalls, and on loopback the receiver's TCP path too."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0
    # Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    rest = stat.rsplit(")", 1)[1].split()
    return int(rest[11]) / _CLOCK_TICKS, int(rest[12]) / _CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time charged to one process so far."""
    return sum(cpu_split(pid))


def cpu_jiffies() -> dict[str, tuple[int, int]]:
    """Per CPU (`cpu0`, ...): (busy, total) clock ticks since boot, from /proc/stat."""
    out: dict[str, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        ticks = [int(f) for f in fields[:8]]
        idle = ticks[3] + ticks[4]  # idle + iowait
        out[name] = (sum(ticks) - idle, sum(ticks))
    return out


def busy_share(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, float]:
    """How busy each CPU was between two `cpu_jiffies()` readings (0..1), whoever ran."""
    share = {}
    for name, (busy, total) in after.items():
        b0, t0 = before.get(name, (0, 0))
        share[name] = round((busy - b0) / (total - t0), 3) if total > t0 else 0.0
    return share


@dataclass
class Processes:
    """The named children of one run; every one is stopped by `stop_all`."""

    log_dir: Path
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cpu: str | None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop_all
        self._logs.append(log)
        proc = subprocess.Popen(
            pinned(argv, cpu),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        self.children[name] = proc
        return proc

    def pid(self, name: str) -> int:
        return self.children[name].pid

    def alive(self, name: str) -> bool:
        proc = self.children.get(name)
        return proc is not None and proc.poll() is None

    def rss(self, names: Iterable[str]) -> dict[str, int]:
        return {name: rss_bytes(self.pid(name)) for name in names if name in self.children}

    def cpu(self, names: Iterable[str]) -> dict[str, float]:
        return {name: cpu_seconds(self.pid(name)) for name in names if name in self.children}

    def system_cpu(self, names: Iterable[str]) -> dict[str, float]:
        return {name: cpu_split(self.pid(name))[1] for name in names if name in self.children}

    def stop(self, names: Iterable[str], timeout_s: float = 20.0) -> None:
        procs = [self.children[n] for n in names if n in self.children]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def stop_all(self) -> None:
        self.stop(list(self.children))
        for log in self._logs:
            with contextlib.suppress(OSError):
                log.close()
