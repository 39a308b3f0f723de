"""The whole gateway as real processes: fake provider, api, worker and billing.

Each module gets its own PostgreSQL database and Redis database, so the stack starts
from nothing, exactly as an operator's would, and the tests read the ledger directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import redis as sync_redis

from services.runner import free_port, wait_for_port

PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/test")
E2E_REDIS_URL = os.environ.get("TEST_E2E_REDIS_URL", "redis://127.0.0.1:6379/13")


def _pg_dsn(database: str) -> str:
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + database


async def _create_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


@dataclass
class Stack:
    env: dict[str, str]
    pg_dsn: str
    api_url: str
    fake_url: str
    var_dir: Path
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "services.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"gateway {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, name: str, *argv: str) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", *argv], env=self.env, stdout=log, stderr=log
        )

    def start_service(self, name: str) -> None:
        self.start(name, "services.cli", "run", name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return asyncio.run(fetch(self.pg_dsn, sql, *args))

    def wait_until(self, predicate: Any, timeout_s: float = 20.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; logs in {self.log_dir}")

    def new_funded_user(self, amount_usd: str = "10") -> tuple[str, str]:
        user_id = re.search(r"usr_[0-9a-f]+", self.cli("users", "create", "--name", "e2e"))
        assert user_id, "users create printed no id"
        key = re.search(r"gw-[A-Za-z0-9_\-]+", self.cli("keys", "create", "--user", user_id[0]))
        assert key, "keys create printed no key"
        if amount_usd != "0":
            self.cli("wallet", "credit", "--user", user_id[0], "--amount", amount_usd)
        return user_id[0], key[0]


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """A plain HTTP call (status, parsed JSON) for what the SDK will not send."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - local
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def _healthy(url: str) -> bool:
    """The gateway's api answers healthy there (not some other server on that port: the
    fake provider answers /health with 200 too)."""
    try:
        status, report = http("GET", url + "/health")
    except OSError:
        return False
    return status == 200 and isinstance(report, dict) and "database" in report


@contextlib.contextmanager
def running_stack(
    tmp_path_factory: pytest.TempPathFactory,
    *,
    demo: bool = True,
    env_overrides: dict[str, str] | None = None,
    services: tuple[str, ...] = ("api", "worker", "billing"),
) -> Iterator[Stack]:
    """Start fake provider + services against a fresh database; stop and drop afterwards.

    `demo=True` routes every model to the fake provider (as `make run` does without keys).
    With `demo=False`, point real provider names at the fake yourself through
    `env_overrides`, e.g. {"API_KEY_ANTHROPIC": "k", "BASE_URL_ANTHROPIC": stack.fake_url + "/v1"}
    -- use the placeholder "{fake}" in values and it is replaced by the fake server's URL.
    """
    database = f"gw_e2e_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_database(database))
    redis_client = sync_redis.Redis.from_url(E2E_REDIS_URL)
    redis_client.flushdb()
    var_dir = tmp_path_factory.mktemp("var")
    log_dir = tmp_path_factory.mktemp("logs")
    api_port, fake_port = free_port(), free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_KEY_", "BASE_URL_"))}
    env.update(
        DATABASE_URL=_pg_dsn(database),
        REDIS_URL=E2E_REDIS_URL,
        PORT=str(api_port),
        HOST="127.0.0.1",
        GATEWAY_VAR_DIR=str(var_dir),
        LOG_FORMAT="json",
        REQUEST_TIMEOUT_SECONDS="20",
        RATE_LIMIT_REQUESTS_PER_MINUTE="1000",
    )
    if demo:
        env.update(
            GATEWAY_DEMO="1", BASE_URL_FAKE=f"{fake_url}/v1", API_KEY_FAKE="e2e-upstream-key"
        )
    for name, value in (env_overrides or {}).items():
        env[name] = value.replace("{fake}", fake_url)
    stack = Stack(
        env=env,
        pg_dsn=_pg_dsn(database),
        api_url=f"http://127.0.0.1:{api_port}",
        fake_url=fake_url,
        var_dir=var_dir,
        log_dir=log_dir,
    )
    try:
        stack.cli("migrate")
        stack.start("fake", "services.fake_provider", "--port", str(fake_port))
        assert wait_for_port(fake_port, 15), "fake provider did not start"
        for name in services:
            stack.start_service(name)
        if "api" in services:
            stack.wait_until(lambda: _healthy(stack.api_url), 30, "the api to report healthy")
        yield stack
    finally:
        stack.stop_all()
        redis_client.flushdb()
        redis_client.close()
        with contextlib.suppress(Exception):
            asyncio.run(_drop_database(database))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The gateway in demo mode: every model answered by the fake provider."""
    with running_stack(tmp_path_factory) as running:
        yield running
