"""Settle one completion event into the database, exactly once.

Within the caller's transaction: the usage row (unique request id: the real
exactly-once guard) and, when the request cost anything, the wallet debit keyed by
the same request id. The Redis side (releasing the hold) follows the commit, in the
consumer.
"""

from __future__ import annotations

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.repositories import ledger, usage
from shared.messages import CompletionEvent

log = structlog.get_logger("billing.settle")


async def settle(session: AsyncSession, event: CompletionEvent) -> bool:
    """Record the event's usage and debit its cost. False when nothing was done: the
    event was already settled, or its user does not exist (logged, so that one bad
    event cannot stall the stream)."""
    if await ledger.get_balance(session, event.user_id) is None:
        # Rows reference the user; an unknown one would fail on every redelivery.
        log.error(
            "event_unknown_user",
            request_id=event.request_id,
            user_id=event.user_id,
            cost_nusd=event.cost_nusd,
        )
        return False
    if not await usage.record_usage(session, event):
        log.info("event_already_settled", request_id=event.request_id, user_id=event.user_id)
        return False
    if event.cost_nusd > 0:
        await ledger.debit(
            session,
            event.user_id,
            event.cost_nusd,
            request_id=event.request_id,
            reason=_reason(event),
        )
    return True


def _reason(event: CompletionEvent) -> str:
    model = event.model_served or event.model_requested
    return f"{model} via {event.provider}" if event.provider else model
