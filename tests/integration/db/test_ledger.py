"""The wallet ledger: idempotent appends, atomic balance updates, balance == ledger sum."""

from __future__ import annotations

import asyncio
import random

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.engine import create_engine, create_sessionmaker
from shared.db.models import LedgerTransaction
from shared.db.repositories import ledger, users


async def _new_user(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with sessions.begin() as s:
        return (await users.create_user(s)).id


async def _rows(
    sessions: async_sessionmaker[AsyncSession], user_id: str
) -> list[LedgerTransaction]:
    async with sessions() as s:
        stmt = (
            select(LedgerTransaction)
            .where(LedgerTransaction.user_id == user_id)
            .order_by(LedgerTransaction.id)
        )
        return list((await s.scalars(stmt)).all())


async def _assert_consistent(sessions: async_sessionmaker[AsyncSession], user_id: str) -> int:
    """balance == ledger sum, and each balance_after follows from the previous row."""
    rows = await _rows(sessions, user_id)
    running = 0
    for row in rows:
        running += row.amount_nusd
        assert row.balance_after_nusd == running, row.id
    async with sessions() as s:
        balance = await ledger.get_balance(s, user_id)
        assert balance == await ledger.ledger_sum(s, user_id) == running
    return running


class TestCredit:
    async def test_same_idempotency_key_credits_once(
        self, any_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        user_id = await _new_user(any_sessions)
        async with any_sessions.begin() as s:
            row, created = await ledger.credit(
                s, user_id, 10 * 10**9, idempotency_key="topup-1", reason="stripe"
            )
        assert created and row.balance_after_nusd == 10 * 10**9 and row.kind == "credit"
        async with any_sessions.begin() as s:
            again, created_again = await ledger.credit(
                s, user_id, 10 * 10**9, idempotency_key="topup-1", reason="stripe"
            )
        assert not created_again and again.id == row.id
        assert await _assert_consistent(any_sessions, user_id) == 10 * 10**9

    async def test_reusing_a_key_for_another_amount_is_refused(
        self, any_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        user_id = await _new_user(any_sessions)
        async with any_sessions.begin() as s:
            await ledger.credit(s, user_id, 5, idempotency_key="k", reason=None)
        with pytest.raises(ledger.IdempotencyKeyReused):
            async with any_sessions.begin() as s:
                await ledger.credit(s, user_id, 6, idempotency_key="k", reason=None)
        assert await _assert_consistent(any_sessions, user_id) == 5

    async def test_rejects_non_positive_amounts_and_unknown_wallets(
        self, any_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        user_id = await _new_user(any_sessions)
        async with any_sessions.begin() as s:
            for amount in (0, -1):
                with pytest.raises(ValueError):
                    await ledger.credit(s, user_id, amount, idempotency_key="x", reason=None)
            with pytest.raises(ledger.UnknownWallet):
                await ledger.credit(s, "usr_missing", 1, idempotency_key="y", reason=None)
            # The failed append rolled back only its own savepoint.
            await ledger.credit(s, user_id, 7, idempotency_key="z", reason=None)
        assert await _assert_consistent(any_sessions, user_id) == 7


class TestDebit:
    async def test_same_request_debits_once(
        self, any_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        user_id = await _new_user(any_sessions)
        async with any_sessions.begin() as s:
            await ledger.credit(s, user_id, 1000, idempotency_key="c", reason=None)
            row = await ledger.debit(s, user_id, 300, request_id="req-1", reason="gpt")
            assert row is not None and row.amount_nusd == -300 and row.balance_after_nusd == 700
            assert row.request_id == "req-1" and row.kind == "debit"
        async with any_sessions.begin() as s:
            assert await ledger.debit(s, user_id, 300, request_id="req-1", reason="gpt") is None
        assert await _assert_consistent(any_sessions, user_id) == 700
        async with any_sessions() as s:
            latest = await ledger.list_transactions(s, user_id, limit=1)
            assert [t.idempotency_key for t in latest] == ["req-1"]

    async def test_debit_may_overdraw(self, any_sessions: async_sessionmaker[AsyncSession]) -> None:
        # Holds bound the overdraft before a request runs; the real cost is always booked.
        user_id = await _new_user(any_sessions)
        async with any_sessions.begin() as s:
            await ledger.debit(s, user_id, 50, request_id="req-x", reason=None)
        assert await _assert_consistent(any_sessions, user_id) == -50


class TestConcurrency:
    async def test_concurrent_debits_keep_balance_equal_to_ledger(self, pg_url: str) -> None:
        engine = create_engine(pg_url, pool_size=30)
        sessions = create_sessionmaker(engine)
        try:
            user_id = await _new_user(sessions)
            async with sessions.begin() as s:
                await ledger.credit(s, user_id, 10**9, idempotency_key="seed", reason=None)
            rng = random.Random(7)
            costs = {f"req-{i}": rng.randint(1, 10_000) for i in range(25)}
            # Every request id twice, shuffled: 50 sessions race on one wallet row.
            attempts = [rid for rid in costs for _ in range(2)]
            rng.shuffle(attempts)

            async def settle_one(rid: str) -> bool:
                async with sessions.begin() as s:
                    return (
                        await ledger.debit(s, user_id, costs[rid], request_id=rid, reason=None)
                        is not None
                    )

            created = await asyncio.gather(*(settle_one(rid) for rid in attempts))
            assert sum(created) == len(costs)
            balance = await _assert_consistent(sessions, user_id)
            assert balance == 10**9 - sum(costs.values())
            assert len(await _rows(sessions, user_id)) == len(costs) + 1
        finally:
            await engine.dispose()

    async def test_concurrent_credits_with_one_key_credit_once(self, pg_url: str) -> None:
        engine = create_engine(pg_url, pool_size=20)
        sessions = create_sessionmaker(engine)
        try:
            user_id = await _new_user(sessions)

            async def credit_once() -> bool:
                async with sessions.begin() as s:
                    _, created = await ledger.credit(
                        s, user_id, 500, idempotency_key=f"dup-{user_id}", reason=None
                    )
                    return created

            created = await asyncio.gather(*(credit_once() for _ in range(20)))
            assert sum(created) == 1
            assert await _assert_consistent(sessions, user_id) == 500
        finally:
            await engine.dispose()


async def test_append_inside_a_larger_transaction_rolls_back_with_it(
    any_sessions: async_sessionmaker[AsyncSession],
) -> None:
    user_id = await _new_user(any_sessions)
    with pytest.raises(RuntimeError):
        async with any_sessions.begin() as s:
            await ledger.credit(s, user_id, 100, idempotency_key="rolled-back", reason=None)
            raise RuntimeError("caller fails after the append")
    assert await _assert_consistent(any_sessions, user_id) == 0
