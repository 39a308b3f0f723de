"""Kill the billing process (SIGKILL) in the middle of settling many events, restart it:
every event is settled exactly once. Real processes, PostgreSQL and Redis."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis as sync_redis

from shared.messages import Attempt, CompletionEvent, Outcome, Usage
from shared.redis import keys
from tests.e2e.conftest import E2E_REDIS_URL, Stack, running_stack

EVENTS = 8_000
USERS = 25
START_NUSD = 10**12


@pytest.fixture(scope="module")
def billing_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory, services=()) as stack:
        yield stack


def seed_users(stack: Stack) -> list[str]:
    users = [f"usr_{uuid.uuid4().hex[:24]}" for _ in range(USERS)]
    for user_id in users:
        stack.query("INSERT INTO users (id, name) VALUES ($1, 'restart')", user_id)
        stack.query(
            "INSERT INTO wallets (user_id, balance_nusd) VALUES ($1, $2)", user_id, START_NUSD
        )
        stack.query(
            "INSERT INTO ledger_transactions (user_id, kind, amount_nusd, balance_after_nusd, "
            "idempotency_key, reason) VALUES ($1, 'credit', $2, $2, $3, 'seed')",
            user_id, START_NUSD, f"seed:{user_id}",
        )  # fmt: skip
    return users


def event(user_id: str, cost_nusd: int) -> CompletionEvent:
    return CompletionEvent(
        request_id=f"req_{uuid.uuid4().hex}", user_id=user_id, key_id=None,
        model_requested="gpt-4o-mini", model_served="gpt-4o-mini", provider="fake",
        outcome=Outcome.OK, stream=False, usage=Usage(prompt_tokens=10, completion_tokens=5),
        usage_estimated=False, cost_nusd=cost_nusd, hold_nusd=cost_nusd,
        attempts=(Attempt(provider="fake", model="gpt-4o-mini", outcome="ok", status=200),),
        finished_ms=int(time.time() * 1000),
    )  # fmt: skip


def count(stack: Stack) -> int:
    return int(stack.query("SELECT count(*) FROM usage_records")[0][0])


def test_killed_mid_batch_then_restarted_settles_each_event_once(billing_only: Stack) -> None:
    stack = billing_only
    users = seed_users(stack)
    events = [event(users[i % USERS], 1000 + i % 97) for i in range(EVENTS)]
    redis = sync_redis.Redis.from_url(E2E_REDIS_URL)
    try:
        for start in range(0, EVENTS, 2000):
            with redis.pipeline(transaction=False) as pipe:
                for item in events[start : start + 2000]:
                    pipe.xadd(keys.EVENTS_STREAM, {"e": item.encode()})
                pipe.execute()

        stack.start_service("billing")
        stack.wait_until(lambda: count(stack) > 0, 30, "billing to start settling")
        stack.kill("billing", signal.SIGKILL)
        at_kill = count(stack)
        assert 0 < at_kill < EVENTS, f"killed too late to prove anything ({at_kill} settled)"
        print(f"\nbilling killed after settling {at_kill} of {EVENTS} events")

        stack.start_service("billing")
        stack.wait_until(lambda: count(stack) == EVENTS, 90, "billing to settle everything")
        time.sleep(0.5)  # anything settled twice would show up now
        summary: Any = redis.xpending(keys.EVENTS_STREAM, keys.EVENTS_GROUP)
        pending = summary["pending"]
    finally:
        redis.close()

    assert count(stack) == EVENTS
    [debits] = stack.query(
        "SELECT count(*) AS n, count(DISTINCT request_id) AS distinct_ids "
        "FROM ledger_transactions WHERE kind = 'debit'"
    )
    assert debits["n"] == debits["distinct_ids"] == EVENTS
    spent: dict[str, int] = {}
    for item in events:
        spent[item.user_id] = spent.get(item.user_id, 0) + item.cost_nusd
    rows = stack.query(
        "SELECT w.user_id, w.balance_nusd, SUM(l.amount_nusd) AS total FROM wallets w "
        "JOIN ledger_transactions l ON l.user_id = w.user_id GROUP BY w.user_id, w.balance_nusd"
    )
    assert {r["user_id"]: r["balance_nusd"] for r in rows} == {
        u: START_NUSD - spent[u] for u in users
    }
    assert all(r["balance_nusd"] == r["total"] for r in rows)
    assert pending == 0
