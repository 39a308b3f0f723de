"""`gateway billing ...` against a real migrated SQLite database and real Redis."""

from __future__ import annotations

import asyncio
import csv
import io

import pytest
import redis as redis_sync
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.settle import settle_batch
from shared.redis import keys
from tests.integration.billing.events import completion_event
from tests.unit.cli import test_cli as base

run = base.run
# The CLI tests' fixtures: a clean environment, a migrated SQLite database, real Redis.
env, db, sync_redis = base.env, base.db, base.sync_redis


def user_with_usage(
    capsys: pytest.CaptureFixture[str], sqlite_sessions: async_sessionmaker[AsyncSession]
) -> str:
    _code, out, _ = run(capsys, "users", "create", "--name", "ops")
    user_id = out.strip()
    assert run(capsys, "wallet", "credit", "--user", user_id, "--amount", "2")[0] == 0

    async def settle() -> None:
        async with sqlite_sessions.begin() as s:
            await settle_batch(
                s, [completion_event(user_id, cost_nusd=1000 * (i + 1)) for i in range(3)]
            )

    asyncio.run(settle())
    return user_id


def test_adjust_refund_transactions_usage_export(
    db: str, capsys: pytest.CaptureFixture[str], sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    user_id = user_with_usage(capsys, sqlite_sessions)
    code, out, _ = run(capsys, "billing", "adjust", "--user", user_id, "--amount", "-0.5",
                       "--reason", "correction", "--idempotency-key", "adj-1")  # fmt: skip
    assert code == 0 and "adjustment of -0.500000000 USD" in out
    code, out, _ = run(capsys, "billing", "adjust", "--user", user_id, "--amount", "-0.5",
                       "--reason", "correction", "--idempotency-key", "adj-1")  # fmt: skip
    assert code == 0 and "nothing changed" in out
    code, out, _ = run(capsys, "billing", "refund", "--user", user_id, "--amount", "0.000006",
                       "--reason", "bad answer", "--request-id", "req_x")  # fmt: skip
    assert code == 0 and "balance: 1.500000000 USD" in out  # 2 - 0.5 - 6000 nUSD + 6000 nUSD

    code, out, _ = run(capsys, "billing", "transactions", "--user", user_id, "--kind", "debit")
    assert code == 0 and out.count(" debit ") == 3
    code, out, _ = run(capsys, "billing", "usage", "--group-by", "user,model")
    assert code == 0 and user_id in out and "0.000006000" in out
    code, out, err = run(capsys, "billing", "export", "--user", user_id)
    assert code == 0 and "exported 3 usage row(s)" in err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(int(r["cost_nusd"]) for r in rows) == [1000, 2000, 3000]

    for bad in (["billing", "adjust", "--user", user_id, "--amount", "0", "--reason", "r"],
                ["billing", "refund", "--user", user_id, "--amount", "-1", "--reason", "r"],
                ["billing", "transactions", "--kind", "loan"],
                ["billing", "usage", "--from", "yesterday"]):  # fmt: skip
        assert run(capsys, *bad)[0] == 1, bad


def test_reconcile_exit_codes(
    db: str,
    env: pytest.MonkeyPatch,
    redis_url: str,
    sync_redis: redis_sync.Redis,
    capsys: pytest.CaptureFixture[str],
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> None:
    env.setenv("REDIS_URL", redis_url)
    user_id = user_with_usage(capsys, sqlite_sessions)
    code, out, _ = run(capsys, "billing", "reconcile")
    assert code == 0 and "no drift" in out

    sync_redis.hset(keys.holds(user_id), "req_gone", "5:1")  # expired long ago
    code, out, _ = run(capsys, "billing", "reconcile", "--no-repair", "--json")
    assert code == 0 and '"holds_expired"' in out and "req_gone" in out
    assert sync_redis.hexists(keys.holds(user_id), "req_gone")  # --no-repair changed nothing
    assert run(capsys, "billing", "reconcile")[0] == 0
    assert not sync_redis.hexists(keys.holds(user_id), "req_gone")

    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE wallets SET balance_nusd = balance_nusd + 1 WHERE user_id = ?", (user_id,)
        )
    code, out, _ = run(capsys, "billing", "reconcile")
    assert code == 3 and user_id in out and "drift" in out


def test_reconcile_needs_redis(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "billing", "reconcile")
    assert code == 1 and "needs Redis" in err
