"""Fixtures of the hostile-input suite: a quiet stack of its own (private PostgreSQL and
Redis, one worker, the default catalog with OpenAI- and Gemini-wire providers pointed at
the fake, a local identity provider for JWTs), a loopback listener that must never be
contacted, and a snapshot of everything a request could change.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from services.runner import free_port
from shared.redis import keys
from tests.audit import open_holds, wait_settled
from tests.fakes.jwks import JwksState, JwksThread, SigningKey
from tests.faults.harness import FaultStack, fault_stack, servers
from tests.faults.servers import missing_requirements

# Counts for the closing report (printed by test_zz_log_scan).
TALLY: dict[str, int] = {"bad_inputs": 0, "five_xx": 0}
LOG_DIRS: list[Path] = []
JWT_SECRET = "fuzz-jwt-secret-" + "9" * 56


class Listener:
    """A TCP listener on 127.0.0.1 that records every connection it accepts.

    Image URLs pointing here (loopback in its many spellings) must never be fetched.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.connections: list[tuple[str, int]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(peer)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@dataclass(slots=True)
class FuzzEnv:
    stack: FaultStack
    user_id: str
    key: str
    listener: Listener
    jwks: JwksState
    signing_key: SigningKey
    issuer: str


@pytest.fixture(scope="session")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzEnv]:
    reason = missing_requirements()
    if reason:
        pytest.skip(f"the fuzz suite needs its own servers: {reason}")
    log_dir = tmp_path_factory.mktemp("fuzz-logs")
    LOG_DIRS.append(log_dir)
    signing_key = SigningKey.generate("RS256", "fuzz-rsa")
    state = JwksState(keys=[signing_key])
    listener = Listener()
    with JwksThread(state, free_port()) as idp, servers() as (pg, redis):
        overrides = {
            "API_KEY_OPENAI": "fuzz-upstream-openai-key-31c9",
            "BASE_URL_OPENAI": "{fake}/v1",
            "API_KEY_GOOGLE": "fuzz-upstream-google-key-77ad",
            "BASE_URL_GOOGLE": "{fake}/v1beta",
            "PROVIDER_MAX_RETRIES": "0",
            "SUPABASE_URL": idp.url,
            "SUPABASE_JWT_SECRET": JWT_SECRET,
            "MAX_BODY_BYTES": str(4 * 1024 * 1024),
        }
        try:
            with fault_stack(
                pg, redis, workers=1, log_dir=log_dir, env_overrides=overrides, demo=False
            ) as stack:
                user_id, key = asyncio.run(stack.funded_user("20"))
                yield FuzzEnv(stack, user_id, key, listener, state, signing_key, idp.url + "/auth/v1")
        finally:
            listener.close()


@dataclass(frozen=True, slots=True)
class Snapshot:
    jobs: int
    events: int
    usage_rows: int
    ledger_rows: int
    holds: dict[str, int]


async def snapshot(stack: FaultStack) -> Snapshot:
    """Everything a request could change: queued jobs, events, ledger, usage, holds.

    Taken once nothing is in flight: billing settles in batches that wait up to
    BILLING_FILL_WAIT_MS to fill, so an earlier test's events may still be landing.
    (Streams are counted by length, so work a refused request queued still shows.)"""
    await wait_settled(stack.redis_url, timeout_s=30)
    redis = Redis.from_url(stack.redis_url)
    try:
        jobs = int(await redis.xlen(keys.JOBS_STREAM))
        events = int(await redis.xlen(keys.EVENTS_STREAM))
        holds = await open_holds(redis)
    finally:
        await redis.aclose()
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        usage_rows = int(await conn.fetchval("SELECT count(*) FROM usage_records"))
        ledger_rows = int(await conn.fetchval("SELECT count(*) FROM ledger_transactions"))
    finally:
        await conn.close()
    return Snapshot(jobs, events, usage_rows, ledger_rows, holds)


async def ledger_rows_after(stack: FaultStack, count: int) -> list[dict[str, Any]]:
    """The ledger rows past the first `count`: what a failed 'nothing charged' check found."""
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT id, user_id, kind, amount_nusd, idempotency_key, reason, created_at "
            "FROM ledger_transactions ORDER BY id OFFSET $1",
            count,
        )
    finally:
        await conn.close()
    return [dict(row) for row in rows]


def count_inputs(statuses: list[int]) -> None:
    TALLY["bad_inputs"] += len(statuses)
    TALLY["five_xx"] += sum(1 for status in statuses if status >= 500)


def error_body(raw: bytes) -> Any:
    import orjson

    return orjson.loads(raw)
