"""Usage records: one row per finished request, written when billing settles its event.

The unique `request_id` makes the row the exactly-once guard of settlement: inserting
it with ON CONFLICT DO NOTHING tells a first delivery from a redelivery.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import UsageRecord
from shared.db.repositories._dialect import insert_or_ignore
from shared.messages import CompletionEvent, Outcome

# Below this, one chunk's timing noise dominates and the rate means nothing.
_MIN_GENERATION_MS = 50


def tokens_per_second(event: CompletionEvent) -> float | None:
    """Completion tokens per second of generation, when that is meaningful.

    Generation time is the call's duration minus the wait for the first content chunk
    when that is known (streaming), else the whole duration.
    """
    tokens = event.usage.completion_tokens
    generation_ms = event.duration_ms
    if event.ttfc_ms is not None and event.duration_ms > event.ttfc_ms:
        generation_ms = event.duration_ms - event.ttfc_ms
    if tokens <= 0 or generation_ms < _MIN_GENERATION_MS:
        return None
    return round(tokens * 1000 / generation_ms, 2)


def usage_values(event: CompletionEvent) -> dict[str, Any]:
    """The usage_records column values for one completion event."""
    return {
        "request_id": event.request_id,
        "user_id": event.user_id,
        "key_id": event.key_id,
        "model_requested": event.model_requested,
        "model_served": event.model_served,
        "provider": event.provider,
        "status": event.outcome.value,
        "http_status": event.http_status,
        "error_code": event.error_code,
        "error_class": event.error_class,
        "stream": event.stream,
        "attempts": len(event.attempts),
        "attempts_detail": [asdict(attempt) for attempt in event.attempts],
        "prompt_tokens": event.usage.prompt_tokens,
        "completion_tokens": event.usage.completion_tokens,
        "cached_tokens": event.usage.cached_tokens,
        "reasoning_tokens": event.usage.reasoning_tokens,
        "usage_estimated": event.usage_estimated,
        "cost_nusd": event.cost_nusd,
        "queue_wait_ms": event.queue_wait_ms,
        "ttfc_ms": event.ttfc_ms,
        "duration_ms": event.duration_ms,
        "tokens_per_second": tokens_per_second(event),
        "client_cancelled": event.outcome == Outcome.CANCELLED,
    }


async def record_usage(session: AsyncSession, event: CompletionEvent) -> bool:
    """Insert the event's usage row. False (and no change) if its request id is recorded."""
    table = UsageRecord.__table__
    stmt = (
        insert_or_ignore(session, table, "request_id")  # type: ignore[arg-type]
        .values(**usage_values(event))
        .returning(table.c.id)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def get_usage(session: AsyncSession, request_id: str) -> UsageRecord | None:
    stmt = select(UsageRecord).where(UsageRecord.request_id == request_id)
    return await session.scalar(stmt)
