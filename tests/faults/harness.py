"""The gateway as real processes on private PostgreSQL and Redis servers, for fault tests
and the soak: start, kill, signal and restart any service; read each one's memory.

    with fault_stack(workers=2) as stack:
        user_id, key = stack.new_funded_user("50")
        stack.kill("worker-1")            # SIGKILL; stack.terminate(...) for SIGTERM
        stack.start_service("worker-1")

Services are named `api`, `billing`, `worker-1`, `worker-2`, ...; logs go to
`stack.log_dir/<name>.log` (JSON lines), which the log scan reads afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from services.runner import free_port, wait_for_port
from tests.faults.servers import PgCluster, RedisServer

T = TypeVar("T")
UPSTREAM_KEY = "faults-upstream-key-5f0e7d"


@dataclass
class FaultStack:
    env: dict[str, str]
    pg: PgCluster
    redis: RedisServer
    database: str
    api_url: str
    fake_url: str
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    extra_fakes: dict[str, str] = field(default_factory=dict)
    user_keys: list[str] = field(default_factory=list)
    _billing_starts: int = 0

    @property
    def pg_dsn(self) -> str:
        return self.pg.dsn(self.database)

    @property
    def redis_url(self) -> str:
        return self.redis.url

    # processes -------------------------------------------------------------------------

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "services.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"gateway {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, name: str, *argv: str) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", *argv], env=self.env, stdout=log, stderr=log
        )
        log.close()

    def start_service(self, name: str) -> None:
        """`api`, `billing`, or `worker-N` (any name starting with `worker`)."""
        kind = "worker" if name.startswith("worker") else name
        if kind == "billing":
            self._billing_starts += 1
        self.start(name, "services.cli", "run", kind)
        if kind == "api":
            self.wait_until(self.api_healthy, 30, "the api to report healthy")
        elif kind == "worker":
            self.wait_until(lambda: self._worker_registered(name), 30, f"{name} to heartbeat")
        elif kind == "billing":
            self.wait_until(self._billing_started, 30, "billing to start consuming")

    def _worker_registered(self, name: str) -> bool:
        import redis as sync_redis

        client = sync_redis.Redis.from_url(self.redis_url)
        try:
            members = client.zrange("gw:workers", 0, -1)
        except sync_redis.exceptions.ConnectionError:
            return False
        finally:
            client.close()
        marker = f"-{self.pid(name)}-"
        return any(marker in m.decode() for m in members)

    def _billing_started(self) -> bool:
        log = self.log_dir / "billing.log"
        started = log.read_text(errors="replace").count('"billing_consumer_started"')
        return started >= self._billing_starts

    def ensure_running(self, *names: str) -> None:
        """Start whichever of `names` is not running (a previous test may have killed it)."""
        for name in names:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                self.procs.pop(name, None)
                self.start_service(name)

    def kill(self, name: str) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def signal(self, name: str, sig: int = signal.SIGTERM) -> subprocess.Popen[bytes]:
        """Send `sig` and forget the process (the caller may wait on what is returned)."""
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        return proc

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def rss_bytes(self, name: str) -> int:
        """Resident memory of a service process, from /proc."""
        status = Path(f"/proc/{self.pid(name)}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.MULTILINE)
        assert match, "no VmRSS line"
        return int(match[1]) * 1024

    def jobs_held_by(self, name: str) -> int:
        """How many jobs the named worker process holds right now (XPENDING by consumer)."""
        import redis as sync_redis

        client = sync_redis.Redis.from_url(self.redis_url)
        try:
            summary = client.xpending("gw:jobs", "workers")
        except sync_redis.exceptions.ResponseError:
            return 0
        finally:
            client.close()
        marker = f"-{self.pid(name)}-"
        return sum(
            int(c["pending"]) for c in summary.get("consumers") or () if marker in c["name"].decode()
        )

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()

    # HTTP and data ---------------------------------------------------------------------

    def api_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.api_url + "/health", timeout=5) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def wait_until(self, predicate: Callable[[], T], timeout_s: float = 20.0, what: str = "") -> T:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or 'a condition'}; logs in {self.log_dir}")

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.pg_dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    def new_funded_user(self, amount_usd: str = "50") -> tuple[str, str]:
        user_id = re.search(r"usr_[0-9a-f]+", self.cli("users", "create", "--name", "faults"))
        assert user_id, "users create printed no id"
        key = re.search(r"gw-[A-Za-z0-9_\-]+", self.cli("keys", "create", "--user", user_id[0]))
        assert key, "keys create printed no key"
        if amount_usd != "0":
            self.cli("wallet", "credit", "--user", user_id[0], "--amount", amount_usd)
        self.user_keys.append(key[0])
        return user_id[0], key[0]

    async def funded_user(self, amount_usd: str = "50") -> tuple[str, str]:
        """A user, an API key and a credit, written in-process (the CLI does the same,
        in a subprocess per call: too slow to do per test)."""
        from shared.db.engine import create_engine, create_sessionmaker
        from shared.db.repositories import api_keys, ledger, users
        from shared.key_secret import load_key_secret
        from shared.money import usd_to_nusd
        from shared.settings import Settings

        settings = Settings.from_env(self.env)
        engine = create_engine(settings.effective_database_url)
        try:
            async with create_sessionmaker(engine).begin() as session:
                user = await users.create_user(session, name="faults")
                _row, key = await api_keys.create_api_key(
                    session, user.id, secret=load_key_secret(settings).value
                )
                if Decimal(amount_usd) > 0:
                    await ledger.credit(
                        session,
                        user.id,
                        usd_to_nusd(Decimal(amount_usd)),
                        idempotency_key=f"faults:{uuid.uuid4()}",
                        reason="fault test",
                    )
        finally:
            await engine.dispose()
        self.user_keys.append(key)
        return user.id, key

    def secrets(self) -> list[str]:
        """What must never appear in a log line: the upstream keys of this stack."""
        wanted = {"ADMIN_TOKEN", "SUPABASE_JWT_SECRET", "API_KEY_HASH_SECRET"}
        found = [v for k, v in self.env.items() if (k.startswith("API_KEY_") or k in wanted) and v]
        return found + self.user_keys


async def _create_database(pg: PgCluster, name: str) -> None:
    conn = await asyncpg.connect(pg.admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@contextlib.contextmanager
def servers() -> Iterator[tuple[PgCluster, RedisServer]]:
    """A fresh private PostgreSQL cluster and Redis server, destroyed afterwards."""
    pg = PgCluster()
    redis = RedisServer()
    try:
        pg.init()
        pg.start()
        redis.start()
        yield pg, redis
    finally:
        redis.destroy()
        pg.destroy()


@contextlib.contextmanager
def fault_stack(
    pg: PgCluster,
    redis: RedisServer,
    *,
    workers: int = 2,
    log_dir: Path | None = None,
    env_overrides: dict[str, str] | None = None,
    catalog_yaml: str | None = None,
    extra_fakes: int = 0,
    demo: bool = True,
) -> Iterator[FaultStack]:
    """Fake provider(s), api, `workers` workers and billing on `pg` and `redis`.

    Demo mode (every model answered by the fake) unless `catalog_yaml` is given or `demo`
    is False (the default catalog, with providers pointed at the fake through
    `env_overrides`). The placeholders `{fake}` and `{fake2}`, `{fake3}`... in it and in `env_overrides` are
    replaced by the fake providers' URLs.
    """
    database = f"gw_faults_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_database(pg, database))
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="gw-faults-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    var_dir = Path(tempfile.mkdtemp(prefix="gw-faults-var-"))
    api_port = free_port()
    fake_ports = [free_port() for _ in range(1 + extra_fakes)]
    fake_urls = [f"http://127.0.0.1:{port}" for port in fake_ports]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_KEY_", "BASE_URL_"))}
    env.update(
        DATABASE_URL=pg.dsn(database),
        REDIS_URL=redis.url,
        PORT=str(api_port),
        HOST="127.0.0.1",
        GATEWAY_VAR_DIR=str(var_dir),
        LOG_FORMAT="json",
        LOG_LEVEL="info",
        REQUEST_TIMEOUT_SECONDS="20",
        RATE_LIMIT_REQUESTS_PER_MINUTE="100000",
        # The PG outage test serves from these caches for 30 s.
        BALANCE_CACHE_TTL_SECONDS="300",
        CACHE_TTL_SECONDS="300",
        WORKER_CLAIM_IDLE_MS="3000",
        WORKER_METRICS_PORT="0",
        BILLING_METRICS_PORT="0",
        ADMIN_TOKEN="faults-admin-token-" + uuid.uuid4().hex,
        API_KEY_HASH_SECRET="faults-hash-secret-" + uuid.uuid4().hex,
    )
    if catalog_yaml is None and demo:
        env.update(GATEWAY_DEMO="1", BASE_URL_FAKE=f"{fake_urls[0]}/v1", API_KEY_FAKE=UPSTREAM_KEY)
    elif catalog_yaml is not None:
        catalog = var_dir / "catalog.yaml"
        catalog.write_text(_fill(catalog_yaml, fake_urls))
        env["CATALOG_PATH"] = str(catalog)
    for name, value in (env_overrides or {}).items():
        env[name] = _fill(value, fake_urls)
    stack = FaultStack(
        env=env,
        pg=pg,
        redis=redis,
        database=database,
        api_url=f"http://127.0.0.1:{api_port}",
        fake_url=fake_urls[0],
        log_dir=log_dir,
        extra_fakes={f"fake{i + 2}": url for i, url in enumerate(fake_urls[1:])},
    )
    try:
        stack.cli("migrate")
        for i, port in enumerate(fake_ports):
            name = "fake" if i == 0 else f"fake{i + 1}"
            stack.start(name, "services.fake_provider", "--port", str(port))
            assert wait_for_port(port, 15), f"{name} provider did not start"
        stack.start_service("billing")
        for n in range(1, workers + 1):
            stack.start_service(f"worker-{n}")
        stack.start_service("api")
        yield stack
    finally:
        stack.stop_all()
        shutil.rmtree(var_dir, ignore_errors=True)


def _fill(text: str, fake_urls: list[str]) -> str:
    for i, url in reversed(list(enumerate(fake_urls))):
        text = text.replace("{fake}" if i == 0 else f"{{fake{i + 1}}}", url)
    return text
