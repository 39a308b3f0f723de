"""Settlement in bulk: one transaction per batch, still exactly once, on both databases."""

from __future__ import annotations

import dataclasses
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.consumer import BillingConsumer
from services.billing.settle import settle, settle_batch
from shared.db.models import LedgerTransaction, UsageRecord
from shared.db.repositories import ledger, usage
from shared.messages import Outcome
from shared.redis import keys
from shared.redis.funds import Funds
from tests.integration.billing.events import (
    completion_event,
    funded_user,
    holds_left,
    place_hold,
    publish,
)


async def _ledger(sessions: async_sessionmaker[AsyncSession], user_id: str) -> list[Any]:
    async with sessions() as s:
        rows = await s.scalars(
            select(LedgerTransaction)
            .where(LedgerTransaction.user_id == user_id)
            .order_by(LedgerTransaction.id)
        )
        return list(rows)


async def test_batch_settles_each_event_once_with_an_exact_balance_chain(
    any_sessions: async_sessionmaker[AsyncSession],
) -> None:
    alice = await funded_user(any_sessions, 10**9)
    bob = await funded_user(any_sessions, 5 * 10**8)
    events = [completion_event(alice, cost_nusd=1000 + i) for i in range(7)]
    events += [completion_event(bob, cost_nusd=333 * (i + 1)) for i in range(5)]
    events.append(completion_event(bob, cost_nusd=0))  # a failed request: usage, no debit
    events.append(events[0])  # the same event twice in one batch
    stranger = completion_event("usr_nobody")

    async with any_sessions.begin() as s:
        outcome = await settle_batch(s, [*events, stranger])
    assert len(outcome.settled) == 13
    assert outcome.already_settled == [events[0]]
    assert outcome.unknown_user == [stranger]

    async with any_sessions.begin() as s:  # redelivered: nothing changes
        again = await settle_batch(s, events[:13])
    assert again.settled == [] and len(again.already_settled) == 13

    for user_id, start, costs in (
        (alice, 10**9, [1000 + i for i in range(7)]),
        (bob, 5 * 10**8, [333 * (i + 1) for i in range(5)]),
    ):
        rows = await _ledger(any_sessions, user_id)
        debits = [r for r in rows if r.kind == "debit"]
        assert [-r.amount_nusd for r in debits] == costs
        # Each row's balance_after is the previous one minus its amount: the chain holds.
        running = start
        for row in debits:
            running += row.amount_nusd
            assert row.balance_after_nusd == running
        async with any_sessions() as s:
            assert (
                await ledger.get_balance(s, user_id)
                == running
                == await ledger.ledger_sum(s, user_id)
            )
    async with any_sessions() as s:
        usage_ids = set((await s.scalars(select(UsageRecord.request_id))).all())
    assert usage_ids == {e.request_id for e in events}


async def test_a_conflicting_batch_falls_back_to_one_by_one(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    user_id = await funded_user(sessions, 10**9)
    events = [completion_event(user_id, cost_nusd=500 + i) for i in range(6)]
    # A debit under one request's key already exists without its usage row (written by
    # hand, say): the batch INSERT fails on the unique key, and one by one recognises it.
    async with sessions.begin() as s:
        await ledger.debit(
            s, user_id, events[2].cost_nusd, request_id=events[2].request_id, reason="x"
        )
    for event in events:
        await place_hold(redis, event)
        await publish(redis, event)
    consumer = BillingConsumer(
        redis, sessions, Funds(redis), consumer_name="bulk-test", block_ms=20
    )

    assert await consumer.drain_once() == 6

    debits = [r for r in await _ledger(sessions, user_id) if r.kind == "debit"]
    assert sorted(r.request_id for r in debits) == sorted(e.request_id for e in events)
    async with sessions() as s:
        assert await ledger.get_balance(s, user_id) == 10**9 - sum(e.cost_nusd for e in events)
    assert await holds_left(redis, user_id) == 0
    assert int((await redis.xpending(keys.EVENTS_STREAM, keys.EVENTS_GROUP))["pending"]) == 0


async def test_failed_and_timed_out_requests_release_their_holds_and_cost_nothing(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    from shared.messages import Outcome

    user_id = await funded_user(sessions, 10**9)
    failed = [completion_event(user_id, cost_nusd=0, outcome=Outcome.ERROR) for _ in range(3)]
    for event in failed:
        await place_hold(redis, event)
        await publish(redis, event)
    assert int(await redis.get(keys.held_total(user_id))) == 3 * failed[0].hold_nusd
    consumer = BillingConsumer(redis, sessions, Funds(redis), consumer_name="err-test")
    assert await consumer.drain_once() == 3
    assert await holds_left(redis, user_id) == 0
    assert int(await redis.get(keys.held_total(user_id)) or 0) == 0
    rows = await _ledger(sessions, user_id)
    assert [r.kind for r in rows] == ["credit"]  # no debit
    async with sessions() as s:
        statuses = (
            await s.scalars(select(UsageRecord.status).where(UsageRecord.user_id == user_id))
        ).all()
    assert statuses == ["error"] * 3


async def test_a_batch_writes_the_same_rows_as_one_by_one_settlement(
    any_sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The batch path (arrays through unnest on PostgreSQL) and the single-event path
    (one ORM insert) must store identical values: nulls, JSON, booleans, floats."""
    user_id = await funded_user(any_sessions, 10**9)
    streamed = completion_event(user_id, cost_nusd=4321)
    bare = dataclasses.replace(
        completion_event(user_id, cost_nusd=0, outcome=Outcome.CANCELLED),
        model_served=None,
        provider=None,
        ttfc_ms=None,
        attempts=(),
        stream=False,
        usage_estimated=True,
        error_code="client_closed",
        error_class="client",
    )
    pairs = []
    for event in (streamed, bare):
        twin = dataclasses.replace(event, request_id=event.request_id + "_one")
        pairs.append((event.request_id, twin.request_id))
        async with any_sessions.begin() as s:
            await settle(s, twin)
    async with any_sessions.begin() as s:
        outcome = await settle_batch(s, [streamed, bare])
    assert outcome.settled == [streamed, bare]

    def columns(row: Any) -> dict[str, Any]:
        skip = {"id", "request_id", "created_at"}
        return {c.key: getattr(row, c.key) for c in UsageRecord.__table__.c if c.key not in skip}

    async with any_sessions() as s:
        for batch_id, single_id in pairs:
            batch_row = await usage.get_usage(s, batch_id)
            single_row = await usage.get_usage(s, single_id)
            assert batch_row is not None and single_row is not None
            assert columns(batch_row) == columns(single_row)
        assert columns(batch_row)["attempts_detail"] is not None
        debits = {
            t.idempotency_key: (t.kind, t.amount_nusd, t.reason)
            for t in await _ledger(any_sessions, user_id)
            if t.kind == "debit"
        }
    assert debits[streamed.request_id] == debits[pairs[0][1]]
    assert debits[streamed.request_id] == ("debit", -4321, "gpt-4o-mini-2024-07-18 via openai")
    assert bare.request_id not in debits
