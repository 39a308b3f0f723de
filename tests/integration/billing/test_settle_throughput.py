"""Settlement throughput on PostgreSQL, one transaction per event vs one per batch.

Prints events/s for both (run with `-s` to see them); asserts only correctness, never
timing. Redis and PostgreSQL are the real local servers.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.consumer import BillingConsumer
from shared.db.repositories import ledger
from shared.redis.funds import Funds
from tests.integration.billing.events import completion_event, funded_user, place_hold, publish

USERS = 20


async def _settle_all(
    redis: Redis, sessions: async_sessionmaker[AsyncSession], *, bulk: bool, events: int
) -> tuple[float, list[str], int]:
    await redis.flushdb()
    users = [await funded_user(sessions, 10**12) for _ in range(USERS)]
    total = 0
    for i in range(events):
        event = completion_event(users[i % USERS], cost_nusd=1000 + i)
        total += event.cost_nusd
        await place_hold(redis, event)
        await publish(redis, event)
    consumer = BillingConsumer(
        redis, sessions, Funds(redis), consumer_name=f"bench-{bulk}", batch_size=100, bulk=bulk
    )
    await consumer.ensure_group()
    started = time.perf_counter()
    assert await consumer.drain_once() == events
    return events / (time.perf_counter() - started), users, total


async def test_bulk_settlement_throughput(
    redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # Fewer events one by one: the figure is a rate, and the slow mode must stay short.
    per_event, users_a, total_a = await _settle_all(redis, sessions, bulk=False, events=200)
    bulk, users_b, total_b = await _settle_all(redis, sessions, bulk=True, events=1000)
    print(f"\nsettlement on PostgreSQL over {USERS} wallets, batches of 100:")
    print(f"  one transaction per event: {per_event:8.0f} events/s")
    print(f"  one transaction per batch: {bulk:8.0f} events/s")
    async with sessions() as s:
        for users, total in ((users_a, total_a), (users_b, total_b)):
            balances = [await ledger.get_balance(s, u) for u in users]
            assert sum(b or 0 for b in balances) == USERS * 10**12 - total
            for user_id in users:
                assert await ledger.get_balance(s, user_id) == await ledger.ledger_sum(s, user_id)
