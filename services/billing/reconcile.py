"""Reconciliation: prove the money adds up, repair what is safe, report the rest.

Checks, each independent of the others:

- every wallet's balance against the SUM of its ledger rows (drift: reported);
- completion events never settled: entries of `gw:events` pending in the billing group,
  or not yet delivered to it, for longer than `stuck_after_ms`, whose request has no
  usage row (reported: the consumer is down or failing);
- holds never released: a hold whose request has a usage row was settled but its
  release was lost (repaired: released), and a hold past its expiry (repaired: expired);
  both also recompute the user's held total;
- usage rows with a cost but no debit, and debits without a usage row (reported:
  settlement writes both in one transaction, so either means a hand-made change).

Repairs touch only Redis reservations, never the ledger: a wrong balance or a missing
debit needs a person to decide, through an adjustment with a reason.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from redis.exceptions import ResponseError

from services.billing.consumer import EVENT_FIELD
from services.billing.stale_holds import HoldFix, users_with_hold_state
from shared.db.repositories import ledger, usage
from shared.messages import CompletionEvent, MessageError
from shared.money import format_usd
from shared.redis import keys
from shared.redis.holds import HoldStore

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = structlog.get_logger("billing.reconcile")

DEFAULT_STUCK_AFTER_MS = 5 * 60_000
# How many problems of one kind a report lists (the counts are always complete).
LIST_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class StuckEvent:
    entry_id: str
    request_id: str | None
    user_id: str | None
    age_ms: int
    state: str  # pending (read, never acked) | undelivered (never read)


@dataclass(slots=True)
class ReconcileReport:
    started_at: str
    duration_ms: int = 0
    wallets_checked: int = 0
    wallet_drift: list[ledger.WalletDrift] = field(default_factory=list)
    unsettled_events: list[StuckEvent] = field(default_factory=list)
    # Stuck entries whose request is settled: only the ack is late; not a problem.
    stuck_but_settled: int = 0
    holds_released: list[HoldFix] = field(default_factory=list)
    holds_expired: list[HoldFix] = field(default_factory=list)
    usage_without_debit: list[str] = field(default_factory=list)
    debits_without_usage: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        """Inconsistencies left for a person (repaired holds are not counted)."""
        return (
            len(self.wallet_drift)
            + len(self.unsettled_events)
            + len(self.usage_without_debit)
            + len(self.debits_without_usage)
        )

    @property
    def repairs(self) -> int:
        return len(self.holds_released) + len(self.holds_expired)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for item, drift in zip(data["wallet_drift"], self.wallet_drift, strict=True):
            item["drift_nusd"] = drift.drift_nusd
        data["problems"] = self.problems
        data["repairs"] = self.repairs
        return data

    def summary(self) -> str:
        """A few lines for an alert or a terminal."""
        lines = [
            (
                f"reconciliation at {self.started_at}: {self.problems} problem(s), "
                f"{self.repairs} repair(s), {self.wallets_checked} wallet(s) checked"
            )
        ]
        for drift in self.wallet_drift[:20]:
            lines.append(
                f"wallet {drift.user_id}: balance {format_usd(drift.balance_nusd)} USD, "
                f"ledger sum {format_usd(drift.ledger_sum_nusd)} USD "
                f"(drift {format_usd(drift.drift_nusd)})"
            )
        if self.unsettled_events:
            lines.append(f"{len(self.unsettled_events)} completion event(s) never settled")
        if self.usage_without_debit:
            lines.append(f"{len(self.usage_without_debit)} usage row(s) with a cost but no debit")
        if self.debits_without_usage:
            lines.append(f"{len(self.debits_without_usage)} debit(s) without a usage row")
        if self.holds_released:
            lines.append(f"released {len(self.holds_released)} hold(s) of settled requests")
        if self.holds_expired:
            lines.append(f"expired {len(self.holds_expired)} stale hold(s)")
        return "\n".join(lines)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


async def reconcile(
    sessions: async_sessionmaker[AsyncSession],
    redis: Redis,
    *,
    stuck_after_ms: int = DEFAULT_STUCK_AFTER_MS,
    repair: bool = True,
    stream: str = keys.EVENTS_STREAM,
    group: str = keys.EVENTS_GROUP,
    at_ms: int | None = None,
) -> ReconcileReport:
    """Run every check; with `repair`, release and expire the holds found stale."""
    now = at_ms if at_ms is not None else _now_ms()
    started = time.perf_counter()
    report = ReconcileReport(started_at=datetime.fromtimestamp(now / 1000, UTC).isoformat())
    async with sessions() as session:
        report.wallets_checked, report.wallet_drift = await ledger.wallet_drift(session)
        report.usage_without_debit = await usage.usage_without_debit(session, limit=LIST_LIMIT)
        report.debits_without_usage = await ledger.debits_without_usage(session, limit=LIST_LIMIT)
        stuck = await _stuck_events(redis, stream, group, now - stuck_after_ms, now)
        settled = await usage.recorded_request_ids(
            session, (e.request_id for e in stuck if e.request_id)
        )
        for event in stuck:
            if event.request_id in settled:
                report.stuck_but_settled += 1
            else:
                report.unsettled_events.append(event)
        await _check_holds(session, HoldStore(redis), report, now, repair=repair)
    report.duration_ms = round((time.perf_counter() - started) * 1000)
    _log(report)
    return report


async def _stuck_events(
    redis: Redis, stream: str, group: str, older_than_ms: int, now_ms: int
) -> list[StuckEvent]:
    """Entries of the events stream, older than the cutoff, that billing has not acked."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no stream yet: nothing was ever published
        return []
    info = next((g for g in groups if _text(g["name"]) == group), None)
    stuck: list[StuckEvent] = []
    pending_ids: list[str] = []
    if info is not None:
        rows = await redis.xpending_range(
            stream, group, min="-", max=f"{older_than_ms}", count=LIST_LIMIT
        )
        pending_ids = [_text(row["message_id"]) for row in rows]
        last_delivered = _text(info["last-delivered-id"])
        undelivered_from = f"({last_delivered}" if last_delivered != "0-0" else "-"
    else:
        undelivered_from = "-"
    for entry_id in pending_ids:
        entry = await redis.xrange(stream, min=entry_id, max=entry_id, count=1)
        fields = entry[0][1] if entry else {}
        stuck.append(_stuck(entry_id, fields, now_ms, "pending"))
    # Entries after the group's last delivered id were never read by any consumer.
    entries = await redis.xrange(
        stream, min=undelivered_from, max=f"{older_than_ms}", count=LIST_LIMIT
    )
    for entry_id, fields in entries:
        stuck.append(_stuck(_text(entry_id), fields, now_ms, "undelivered"))
    return stuck


def _stuck(entry_id: str, fields: dict[bytes, bytes], now_ms: int, state: str) -> StuckEvent:
    request_id = user_id = None
    try:
        event = CompletionEvent.decode(fields[EVENT_FIELD])
        request_id, user_id = event.request_id, event.user_id
    except (KeyError, MessageError):
        pass  # an entry the consumer will dead-letter: listed without a request id
    return StuckEvent(entry_id, request_id, user_id, now_ms - _entry_ms(entry_id), state)


async def _check_holds(
    session: AsyncSession, store: HoldStore, report: ReconcileReport, now_ms: int, *, repair: bool
) -> None:
    for user_id in sorted(await users_with_hold_state(store)):
        holds = await store.holds(user_id)
        settled = await usage.recorded_request_ids(session, (h.request_id for h in holds))
        expired = [
            h.request_id for h in holds if h.request_id not in settled and h.expires_ms < now_ms
        ]
        if not repair:
            report.holds_released += [HoldFix(user_id, rid) for rid in sorted(settled)]
            report.holds_expired += [HoldFix(user_id, rid) for rid in expired]
            continue
        if settled:
            dropped = await store.release(user_id, settled)
            report.holds_released += [HoldFix(user_id, rid) for rid in dropped.request_ids]
        # Also recomputes the held total of a user whose holds are all fine.
        dropped = await store.expire(user_id, now_ms)
        report.holds_expired += [HoldFix(user_id, rid) for rid in dropped.request_ids]


def _log(report: ReconcileReport) -> None:
    fields: dict[str, Any] = {
        "wallets_checked": report.wallets_checked,
        "wallet_drift": len(report.wallet_drift),
        "unsettled_events": len(report.unsettled_events),
        "stuck_but_settled": report.stuck_but_settled,
        "usage_without_debit": len(report.usage_without_debit),
        "debits_without_usage": len(report.debits_without_usage),
        "holds_released": len(report.holds_released),
        "holds_expired": len(report.holds_expired),
        "duration_ms": report.duration_ms,
    }
    if report.problems:
        log.error("reconciliation_drift", problems=report.problems, **fields)
        for drift in report.wallet_drift[:100]:
            log.error(
                "wallet_drift",
                user_id=drift.user_id,
                balance_nusd=drift.balance_nusd,
                ledger_sum_nusd=drift.ledger_sum_nusd,
            )
    else:
        log.info("reconciliation_clean", **fields)
