"""Settle completion events into the database, exactly once.

Within the caller's transaction: the usage row (unique request id: the real
exactly-once guard) and, when the request cost anything, the wallet debit keyed by
the same request id. The Redis side (releasing the hold) follows the commit, in the
consumer.

`settle_batch` does the same for many events in a handful of statements (lock the
wallets, one multi-row usage INSERT ... ON CONFLICT DO NOTHING, one balance update per
wallet, one multi-row ledger INSERT); `settle` does one event and is the fallback
when a batch cannot commit as a whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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
        _log_unknown_user(event)
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


@dataclass(slots=True)
class BatchOutcome:
    """What `settle_batch` did with each event (every event lands in exactly one list)."""

    settled: list[CompletionEvent] = field(default_factory=list)
    already_settled: list[CompletionEvent] = field(default_factory=list)
    unknown_user: list[CompletionEvent] = field(default_factory=list)


async def settle_batch(session: AsyncSession, events: Sequence[CompletionEvent]) -> BatchOutcome:
    """Settle many events in the caller's transaction, each at most once.

    A request id seen twice in the batch is settled once (the later copy counts as
    already settled). If a debit's key exists without its usage row (hand-made ledger
    rows), the INSERT fails with IntegrityError: roll back and settle one by one.
    """
    outcome = BatchOutcome()
    first: dict[str, CompletionEvent] = {}
    for event in events:
        if event.request_id in first:
            outcome.already_settled.append(event)
        else:
            first[event.request_id] = event
    wallets = await ledger.lock_wallets(session, (e.user_id for e in first.values()))
    known: list[CompletionEvent] = []
    for event in first.values():
        if event.user_id in wallets:
            known.append(event)
        else:
            _log_unknown_user(event)
            outcome.unknown_user.append(event)
    new_ids = await usage.record_usage_many(session, known)
    debits: list[ledger.Debit] = []
    for event in known:
        if event.request_id not in new_ids:
            outcome.already_settled.append(event)
            continue
        outcome.settled.append(event)
        if event.cost_nusd > 0:
            debits.append(
                ledger.Debit(event.user_id, event.cost_nusd, event.request_id, _reason(event))
            )
    await ledger.debit_many(session, debits, locked=wallets)
    return outcome


def _log_unknown_user(event: CompletionEvent) -> None:
    # Rows reference the user; an unknown one would fail on every redelivery.
    log.error(
        "event_unknown_user",
        request_id=event.request_id,
        user_id=event.user_id,
        cost_nusd=event.cost_nusd,
    )


def _reason(event: CompletionEvent) -> str:
    model = event.model_served or event.model_requested
    return f"{model} via {event.provider}" if event.provider else model
