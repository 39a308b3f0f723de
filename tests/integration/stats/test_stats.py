"""Operator queries give the same figures on PostgreSQL (percentile_cont) and SQLite (Python)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import UsageRecord
from shared.db.repositories import stats, usage, users
from shared.messages import Attempt, CompletionEvent, Outcome, Usage

NOW = datetime.now(UTC)
RANGE = (NOW - timedelta(hours=1), NOW + timedelta(hours=1))


def event(
    user_id: str,
    *,
    provider: str | None = "openai",
    model: str = "gpt-4o",
    outcome: Outcome = Outcome.OK,
    attempts: tuple[Attempt, ...] | None = None,
    duration_ms: int = 1000,
    ttfc_ms: int | None = None,
    completion_tokens: int = 50,
    cost_nusd: int = 1000,
    http_status: int = 200,
) -> CompletionEvent:
    if attempts is None:
        attempts = (Attempt(provider=provider or "", model=model, outcome="ok", status=200),)
    return CompletionEvent(
        request_id=f"req_{uuid.uuid4().hex}",
        user_id=user_id,
        key_id=None,
        model_requested=model,
        model_served=model if provider else None,
        provider=provider,
        outcome=outcome,
        stream=ttfc_ms is not None,
        usage=Usage(prompt_tokens=10, completion_tokens=completion_tokens),
        usage_estimated=False,
        cost_nusd=cost_nusd,
        hold_nusd=0,
        attempts=attempts,
        http_status=http_status,
        error_class="technical" if outcome is Outcome.ERROR else None,
        duration_ms=duration_ms,
        ttfc_ms=ttfc_ms,
        finished_ms=int(time.time() * 1000),
    )


async def seed(sessions: async_sessionmaker[AsyncSession]) -> tuple[str, str]:
    """Two users; openai serves five streams, fails once over to openrouter, fails twice."""
    async with sessions.begin() as s:
        alice = (await users.create_user(s, email="alice@example.com")).id
        bob = (await users.create_user(s, name="bob")).id
        for i in range(5):  # durations 100..500 ms, first chunks 50..250 ms
            await usage.record_usage(
                s, event(alice, duration_ms=100 * (i + 1), ttfc_ms=50 * (i + 1), cost_nusd=1000)
            )
        failed_then_ok = (
            Attempt(provider="openai", model="gpt-4o", outcome="technical", status=500),
            Attempt(provider="openrouter", model="gpt-4o", outcome="ok", status=200),
        )
        await usage.record_usage(
            s, event(bob, provider="openrouter", attempts=failed_then_ok, cost_nusd=7000)
        )
        both_failed = (
            Attempt(provider="openai", model="gpt-4o", outcome="technical", status=503),
            Attempt(provider="openrouter", model="gpt-4o", outcome="technical", status=502),
        )
        for _ in range(2):
            await usage.record_usage(
                s,
                event(
                    bob,
                    provider="openrouter",
                    outcome=Outcome.ERROR,
                    attempts=both_failed,
                    cost_nusd=0,
                    http_status=502,
                ),
            )
        # Before the range: must not count anywhere.
        old = event(alice, cost_nusd=999_999)
        await usage.record_usage(s, old)
        await s.execute(
            update(UsageRecord)
            .where(UsageRecord.request_id == old.request_id)
            .values(created_at=NOW - timedelta(days=3))
        )
    return alice, bob


async def test_provider_stats(any_sessions: async_sessionmaker[AsyncSession]) -> None:
    await seed(any_sessions)
    async with any_sessions() as s:
        rows = {(r.provider, r.model): r for r in await stats.provider_stats(s, *RANGE)}
    assert set(rows) == {("openai", "gpt-4o"), ("openrouter", "gpt-4o")}

    openai = rows[("openai", "gpt-4o")]
    # 5 served calls + 3 failed calls that fell over to openrouter.
    assert (openai.requests, openai.requests_ok) == (5, 5)
    assert (openai.attempts, openai.successes, openai.technical_errors) == (8, 5, 3)
    assert openai.success_rate == 0.625
    # percentile_cont over 100..500: p50 = 300, p90 = 460, p99 = 496.
    assert openai.latency_ms.to_dict() == {"p50": 300.0, "p90": 460.0, "p99": 496.0}
    assert openai.ttft_ms.to_dict() == {"p50": 150.0, "p90": 230.0, "p99": 248.0}
    # 50 tokens over (duration - ttfc) = 50..250 ms: 1000, 500, 333.33, 250, 200 tokens/s.
    assert openai.tokens_per_second_p50 == 333.33
    assert openai.to_dict()["tokens_per_second"]["avg"] == round(
        (1000 + 500 + 333.33 + 250 + 200) / 5, 2
    )

    openrouter = rows[("openrouter", "gpt-4o")]
    assert (openrouter.requests, openrouter.requests_ok) == (3, 1)
    assert (openrouter.attempts, openrouter.successes, openrouter.technical_errors) == (3, 1, 2)
    assert openrouter.success_rate == round(1 / 3, 4)
    assert openrouter.latency_ms.p50 == 1000.0  # only the successful request counts
    assert openrouter.ttft_ms.p50 is None  # not a stream


async def test_spend_by_user_model_and_day(any_sessions: async_sessionmaker[AsyncSession]) -> None:
    alice, bob = await seed(any_sessions)
    async with any_sessions() as s:
        by_user = await stats.spend(s, *RANGE, group=stats.SpendGroup.USER)
        by_model = await stats.spend(s, *RANGE, group=stats.SpendGroup.MODEL)
        by_day = await stats.spend(s, *RANGE, group=stats.SpendGroup.DAY)
        everything = await stats.spend(
            s, NOW - timedelta(days=7), RANGE[1], group=stats.SpendGroup.DAY
        )
    assert [(r.key, r.requests, r.cost_nusd, r.label) for r in by_user] == [
        (bob, 3, 7000, "bob"),  # biggest spender first
        (alice, 5, 5000, "alice@example.com"),
    ]
    assert by_user[1].completion_tokens == 250 and by_user[1].prompt_tokens == 50
    assert [(r.key, r.requests, r.cost_nusd) for r in by_model] == [("gpt-4o", 8, 12_000)]
    assert [(r.key, r.requests, r.cost_nusd) for r in by_day] == [
        (NOW.strftime("%Y-%m-%d"), 8, 12_000)
    ]
    assert [r.key for r in everything] == [
        (NOW - timedelta(days=3)).strftime("%Y-%m-%d"),
        NOW.strftime("%Y-%m-%d"),
    ]
    assert sum(r.cost_nusd for r in everything) == 12_000 + 999_999


async def test_traffic_and_recent_errors(any_sessions: async_sessionmaker[AsyncSession]) -> None:
    await seed(any_sessions)
    async with any_sessions() as s:
        hourly = await stats.traffic(s, *RANGE)
        daily = await stats.traffic(s, *RANGE, bucket=stats.Bucket.DAY)
        errors = await stats.recent_errors(s, *RANGE, limit=10)
    assert sum(p.requests for p in hourly) == 8
    assert sum(p.errors for p in hourly) == 2
    assert sum(p.cost_nusd for p in hourly) == 12_000
    assert all(len(p.bucket) == len("2026-01-01T10:00") for p in hourly)
    assert [(p.bucket, p.requests) for p in daily] == [(NOW.strftime("%Y-%m-%d"), 8)]
    # Two failures and one request that needed a fallback; newest first.
    assert [e.status for e in errors] == ["error", "error", "ok"]
    assert all(e.attempts == 2 for e in errors)


async def test_empty_range(any_sessions: async_sessionmaker[AsyncSession]) -> None:
    await seed(any_sessions)
    far = (NOW + timedelta(days=10), NOW + timedelta(days=11))
    async with any_sessions() as s:
        assert await stats.provider_stats(s, *far) == []
        assert await stats.spend(s, *far, group=stats.SpendGroup.USER) == []
        assert await stats.traffic(s, *far) == []


def test_percentile_cont_matches_postgres_definition() -> None:
    assert stats.percentile_cont([], 0.5) is None
    assert stats.percentile_cont([7.0], 0.99) == 7.0
    assert stats.percentile_cont([1.0, 2.0], 0.5) == 1.5
    assert stats.percentile_cont([10.0, 20.0, 30.0, 40.0], 0.9) == 37.0
