"""Builders for billing tests: users with funds, completion events, admission-like holds."""

from __future__ import annotations

import time
import uuid

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.repositories import ledger, users
from shared.messages import Attempt, CompletionEvent, Outcome, Usage
from shared.redis import keys


async def funded_user(sessions: async_sessionmaker[AsyncSession], nusd: int = 10**9) -> str:
    async with sessions.begin() as s:
        user = await users.create_user(s, email="billing@example.com")
        if nusd:
            await ledger.credit(s, user.id, nusd, idempotency_key=f"seed:{user.id}", reason="seed")
        return user.id


def completion_event(
    user_id: str,
    *,
    cost_nusd: int = 12_345,
    request_id: str | None = None,
    hold_nusd: int = 50_000,
    outcome: Outcome = Outcome.OK,
) -> CompletionEvent:
    return CompletionEvent(
        request_id=request_id or f"req_{uuid.uuid4().hex}",
        user_id=user_id,
        key_id="key_test",
        model_requested="gpt-4o-mini",
        model_served="gpt-4o-mini-2024-07-18",
        provider="openai",
        outcome=outcome,
        stream=True,
        usage=Usage(prompt_tokens=100, completion_tokens=40, cached_tokens=10),
        usage_estimated=False,
        cost_nusd=cost_nusd,
        hold_nusd=hold_nusd,
        attempts=(
            Attempt(provider="together", model="m", outcome="technical", status=503, latency_ms=20),
            Attempt(
                provider="openai", model="gpt-4o-mini", outcome="ok", status=200, latency_ms=900
            ),
        ),
        http_status=200,
        queue_wait_ms=3,
        ttfc_ms=200,
        duration_ms=1200,
        finished_ms=int(time.time() * 1000),
    )


async def place_hold(redis: Redis, event: CompletionEvent) -> None:
    """What admission leaves behind for a request in flight."""
    expires_ms = int(time.time() * 1000) + 600_000
    hold = f"{event.hold_nusd}:{expires_ms}"
    await redis.hset(keys.holds(event.user_id), event.request_id, hold)  # type: ignore[misc]
    await redis.incrby(keys.held_total(event.user_id), event.hold_nusd)


async def holds_left(redis: Redis, user_id: str) -> int:
    """How many holds the user still has in Redis."""
    return int(await redis.hlen(keys.holds(user_id)))  # type: ignore[misc]


async def publish(redis: Redis, event: CompletionEvent) -> bytes:
    """What the worker does at the end of a job."""
    entry_id: bytes = await redis.xadd(keys.EVENTS_STREAM, {"e": event.encode()})
    return entry_id
