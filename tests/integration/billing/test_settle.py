"""settle(): one usage row and one debit per request id, whatever the redeliveries."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import replace

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.settle import settle
from shared.db.engine import create_engine, create_sessionmaker
from shared.db.models import LedgerTransaction, UsageRecord
from shared.db.repositories import ledger, usage
from shared.messages import Outcome
from tests.integration.billing.events import completion_event, funded_user


async def _count(sessions: async_sessionmaker[AsyncSession], model: type) -> int:
    async with sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def _debits(sessions: async_sessionmaker[AsyncSession], user_id: str) -> int:
    async with sessions() as s:
        stmt = select(func.count()).where(
            LedgerTransaction.kind == "debit", LedgerTransaction.user_id == user_id
        )
        return int(await s.scalar(stmt) or 0)


async def test_same_event_twice_settles_once(
    any_sessions: async_sessionmaker[AsyncSession],
) -> None:
    user_id = await funded_user(any_sessions, 1_000_000)
    event = completion_event(user_id, cost_nusd=12_345)
    for expected in (True, False):
        async with any_sessions.begin() as s:
            assert await settle(s, event) is expected
    assert await _count(any_sessions, UsageRecord) == 1
    assert await _debits(any_sessions, user_id) == 1
    async with any_sessions() as s:
        assert await ledger.get_balance(s, user_id) == 1_000_000 - 12_345
        assert await ledger.ledger_sum(s, user_id) == 1_000_000 - 12_345
        row = await usage.get_usage(s, event.request_id)
    assert row is not None
    assert (row.status, row.cost_nusd, row.prompt_tokens, row.completion_tokens) == (
        "ok",
        12_345,
        100,
        40,
    )
    assert row.attempts == 2 and row.attempts_detail is not None
    assert row.attempts_detail == [dataclasses.asdict(a) for a in event.attempts]
    assert row.tokens_per_second == 40.0  # 40 tokens over 1200 - 200 ms
    assert row.client_cancelled is False and row.stream is True


async def test_free_event_records_usage_without_debit(
    any_sessions: async_sessionmaker[AsyncSession],
) -> None:
    user_id = await funded_user(any_sessions, 0)
    event = completion_event(user_id, cost_nusd=0, outcome=Outcome.CANCELLED)
    async with any_sessions.begin() as s:
        assert await settle(s, event) is True
    assert await _count(any_sessions, UsageRecord) == 1
    assert await _count(any_sessions, LedgerTransaction) == 0
    async with any_sessions() as s:
        row = await usage.get_usage(s, event.request_id)
    assert row is not None and row.client_cancelled is True and row.status == "cancelled"


async def test_unknown_user_is_skipped(any_sessions: async_sessionmaker[AsyncSession]) -> None:
    async with any_sessions.begin() as s:
        assert await settle(s, completion_event("usr_nobody")) is False
    assert await _count(any_sessions, UsageRecord) == 0


async def test_settlement_rolls_back_with_its_transaction(
    any_sessions: async_sessionmaker[AsyncSession],
) -> None:
    user_id = await funded_user(any_sessions, 1000)
    event = completion_event(user_id, cost_nusd=100)
    with pytest.raises(RuntimeError):
        async with any_sessions.begin() as s:
            assert await settle(s, event)
            raise RuntimeError("commit never happens")
    assert await _count(any_sessions, UsageRecord) == 0
    async with any_sessions() as s:
        assert await ledger.get_balance(s, user_id) == 1000 == await ledger.ledger_sum(s, user_id)
    async with any_sessions.begin() as s:  # and the event can still be settled later
        assert await settle(s, event) is True


async def test_concurrent_settlements_of_one_event(pg_url: str) -> None:
    engine = create_engine(pg_url, pool_size=10)
    sessions = create_sessionmaker(engine)
    try:
        user_id = await funded_user(sessions, 1000)
        event = completion_event(user_id, cost_nusd=7)

        async def attempt() -> bool:
            async with sessions.begin() as s:
                return await settle(s, event)

        results = await asyncio.gather(*(attempt() for _ in range(10)))
        assert sum(results) == 1
        assert await _debits(sessions, user_id) == 1
        async with sessions() as s:
            assert await ledger.get_balance(s, user_id) == 993
    finally:
        await engine.dispose()


def test_tokens_per_second_only_when_meaningful() -> None:
    base = completion_event("u")
    assert usage.tokens_per_second(base) == 40.0
    assert usage.tokens_per_second(replace(base, ttfc_ms=None)) == round(40 / 1.2, 2)
    # 1 ms of generation says nothing about speed.
    assert usage.tokens_per_second(replace(base, ttfc_ms=1199)) is None
    assert usage.tokens_per_second(replace(base, duration_ms=0, ttfc_ms=None)) is None
