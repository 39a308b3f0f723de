"""The wallet ledger: append-only rows, each moving the wallet balance atomically.

Every append first locks the wallet (a no-op UPDATE: the row lock on PostgreSQL, the
write lock on SQLite), so concurrent appends to one wallet serialise; then, if the
idempotency key is new, inside a SAVEPOINT,

    UPDATE wallets SET balance_nusd = balance_nusd + :delta ... RETURNING balance_nusd
    INSERT INTO ledger_transactions (..., balance_after_nusd = <returned>)

so each `balance_after_nusd` is exact. The unique `idempotency_key` is the exactly-once
guard: a duplicate that slips past the check fails the INSERT, the SAVEPOINT rolls back
the UPDATE with it, and the existing row is returned. The caller's transaction stays
usable; nothing here commits.

Why lock with a statement of its own: pysqlite opens a transaction only before
INSERT/UPDATE/DELETE, so a SAVEPOINT sent first would start one itself and its RELEASE
would commit everything early. After the lock, the SAVEPOINT always nests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import LedgerTransaction, Wallet
from shared.db.repositories._bulk import insert_unnest


class LedgerKind(StrEnum):
    CREDIT = "credit"
    DEBIT = "debit"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"


class LedgerError(Exception):
    """A ledger append that cannot be applied."""


class UnknownWallet(LedgerError):
    def __init__(self, user_id: str) -> None:
        super().__init__(f"no wallet for user {user_id!r}")
        self.user_id = user_id


class IdempotencyKeyReused(LedgerError):
    """The key already names a different movement (other user, kind or amount)."""

    def __init__(self, existing: LedgerTransaction) -> None:
        super().__init__(
            f"idempotency key {existing.idempotency_key!r} already used for "
            f"{existing.kind} of {existing.amount_nusd} nUSD on {existing.user_id}"
        )
        self.existing = existing


async def _by_key(session: AsyncSession, idempotency_key: str) -> LedgerTransaction | None:
    stmt = select(LedgerTransaction).where(LedgerTransaction.idempotency_key == idempotency_key)
    return await session.scalar(stmt)


def _same_movement(
    row: LedgerTransaction, user_id: str, kind: str, amount_nusd: int
) -> LedgerTransaction:
    if (row.user_id, row.kind, row.amount_nusd) != (user_id, kind, amount_nusd):
        raise IdempotencyKeyReused(row)
    return row


async def _lock_wallet(session: AsyncSession, user_id: str) -> None:
    locked = await session.scalar(
        update(Wallet)
        .where(Wallet.user_id == user_id)
        .values(balance_nusd=Wallet.balance_nusd)
        .returning(Wallet.user_id)
        .execution_options(synchronize_session=False)
    )
    if locked is None:
        raise UnknownWallet(user_id)


async def append(
    session: AsyncSession,
    user_id: str,
    kind: LedgerKind | str,
    amount_nusd: int,
    idempotency_key: str,
    reason: str | None,
    request_id: str | None = None,
) -> tuple[LedgerTransaction, bool]:
    """Append one signed movement and apply it to the wallet, at most once per key.

    Returns the row and True when it was created now, or the existing row and False
    when the key was already used for the same movement.

    :raises UnknownWallet: `user_id` has no wallet.
    :raises IdempotencyKeyReused: the key was used for a different movement.
    """
    kind = LedgerKind(kind)
    await _lock_wallet(session, user_id)
    # Under the lock this sees any committed duplicate; the unique key stays the guard.
    existing = await _by_key(session, idempotency_key)
    if existing is not None:
        return _same_movement(existing, user_id, kind, amount_nusd), False
    try:
        async with session.begin_nested():
            balance_after = await session.scalar(
                update(Wallet)
                .where(Wallet.user_id == user_id)
                .values(balance_nusd=Wallet.balance_nusd + amount_nusd, updated_at=func.now())
                .returning(Wallet.balance_nusd)
                # The wallet is re-read whenever needed; no in-memory copy to keep in sync.
                .execution_options(synchronize_session=False)
            )
            if balance_after is None:  # pragma: no cover - locked above
                raise UnknownWallet(user_id)
            row = LedgerTransaction(
                user_id=user_id,
                kind=kind.value,
                amount_nusd=amount_nusd,
                balance_after_nusd=balance_after,
                idempotency_key=idempotency_key,
                request_id=request_id,
                reason=reason,
            )
            session.add(row)
            await session.flush()
    except IntegrityError:
        # A concurrent transaction committed the same key between our check and insert.
        existing = await _by_key(session, idempotency_key)
        if existing is None:
            raise
        return _same_movement(existing, user_id, kind, amount_nusd), False
    return row, True


async def credit(
    session: AsyncSession,
    user_id: str,
    amount_nusd: int,
    *,
    idempotency_key: str,
    reason: str | None,
) -> tuple[LedgerTransaction, bool]:
    """Add funds. Returns (row, created); the same key again changes nothing."""
    if amount_nusd <= 0:
        raise ValueError(f"credit amount must be positive, got {amount_nusd}")
    return await append(session, user_id, LedgerKind.CREDIT, amount_nusd, idempotency_key, reason)


async def debit(
    session: AsyncSession,
    user_id: str,
    amount_nusd: int,
    *,
    request_id: str,
    reason: str | None,
) -> LedgerTransaction | None:
    """Charge a request's cost, keyed by its request id. None if it was already charged."""
    if amount_nusd <= 0:
        raise ValueError(f"debit amount must be positive, got {amount_nusd}")
    row, created = await append(
        session,
        user_id,
        LedgerKind.DEBIT,
        -amount_nusd,
        request_id,
        reason,
        request_id=request_id,
    )
    return row if created else None


async def get_balance(session: AsyncSession, user_id: str) -> int | None:
    """The wallet's balance in nUSD, or None when the user has no wallet."""
    stmt = select(Wallet.balance_nusd).where(Wallet.user_id == user_id)
    return await session.scalar(stmt)


async def ledger_sum(session: AsyncSession, user_id: str) -> int:
    """The sum of the wallet's ledger rows: what the balance must equal."""
    stmt = select(func.coalesce(func.sum(LedgerTransaction.amount_nusd), 0)).where(
        LedgerTransaction.user_id == user_id
    )
    return int(await session.scalar(stmt) or 0)


async def list_transactions(
    session: AsyncSession, user_id: str, limit: int = 20
) -> Sequence[LedgerTransaction]:
    """The wallet's most recent ledger rows, newest first."""
    stmt = (
        select(LedgerTransaction)
        .where(LedgerTransaction.user_id == user_id)
        # Ids follow insertion order (and so the balance chain); created_at is the
        # transaction's start on PostgreSQL and only has whole seconds on SQLite.
        .order_by(LedgerTransaction.id.desc())
        .limit(limit)
    )
    return (await session.scalars(stmt)).all()


# --- refunds and adjustments --------------------------------------------------------------


async def refund(
    session: AsyncSession,
    user_id: str,
    amount_nusd: int,
    *,
    idempotency_key: str,
    reason: str,
    reference: str | None = None,
) -> tuple[LedgerTransaction, bool]:
    """Give money back (positive), with a reason and what it refers to (a request id).

    Returns (row, created); the same key again changes nothing.
    """
    if amount_nusd <= 0:
        raise ValueError(f"refund amount must be positive, got {amount_nusd}")
    if not reason:
        raise ValueError("a refund needs a reason")
    return await append(
        session,
        user_id,
        LedgerKind.REFUND,
        amount_nusd,
        idempotency_key,
        reason,
        request_id=reference,
    )


async def adjust(
    session: AsyncSession,
    user_id: str,
    amount_nusd: int,
    *,
    idempotency_key: str,
    reason: str,
) -> tuple[LedgerTransaction, bool]:
    """An operator's correction, either sign. Returns (row, created), once per key."""
    if amount_nusd == 0:
        raise ValueError("an adjustment of zero changes nothing")
    if not reason:
        raise ValueError("an adjustment needs a reason")
    return await append(
        session, user_id, LedgerKind.ADJUSTMENT, amount_nusd, idempotency_key, reason
    )


# --- settlement in bulk -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Debit:
    """One request's charge, for `debit_many`."""

    user_id: str
    amount_nusd: int
    request_id: str
    reason: str | None


async def lock_wallets(session: AsyncSession, user_ids: Iterable[str]) -> dict[str, int]:
    """Lock the wallets (in user-id order, so concurrent batches cannot deadlock) and
    return their balances. Missing wallets are absent from the result."""
    ordered = sorted(set(user_ids))
    if not ordered:
        return {}
    if session.get_bind().dialect.name == "sqlite":
        # SQLite locks the whole database on the first write; see the module docstring.
        await session.execute(
            update(Wallet)
            .where(Wallet.user_id.in_(ordered))
            .values(balance_nusd=Wallet.balance_nusd)
            .execution_options(synchronize_session=False)
        )
        stmt = select(Wallet.user_id, Wallet.balance_nusd).where(Wallet.user_id.in_(ordered))
    else:
        stmt = (
            select(Wallet.user_id, Wallet.balance_nusd)
            .where(Wallet.user_id.in_(ordered))
            .order_by(Wallet.user_id)
            .with_for_update()
        )
    return {user_id: int(balance) for user_id, balance in (await session.execute(stmt)).all()}


async def debit_many(
    session: AsyncSession, debits: Sequence[Debit], *, locked: Mapping[str, int] | None = None
) -> int:
    """Charge many requests at once: one lock query, one UPDATE per wallet in a single
    executemany, one multi-row INSERT. Returns the number of rows written.

    `locked`: balances from `lock_wallets` earlier in this transaction, covering every
    debited wallet; saves locking them again.

    All or nothing: a request id that was already charged makes the INSERT fail with
    IntegrityError (the unique idempotency key), and the caller's transaction must be
    rolled back; `debit()` one by one then tells the duplicates apart.

    :raises UnknownWallet: a debit names a user without a wallet.
    """
    if not debits:
        return 0
    for item in debits:
        if item.amount_nusd <= 0:
            raise ValueError(f"debit amount must be positive, got {item.amount_nusd}")
    if locked is None:
        balances = await lock_wallets(session, (d.user_id for d in debits))
    else:
        balances = dict(locked)
    rows: list[dict[str, Any]] = []
    for item in debits:
        if item.user_id not in balances:
            raise UnknownWallet(item.user_id)
        balances[item.user_id] -= item.amount_nusd
        rows.append(
            {
                "user_id": item.user_id,
                "kind": LedgerKind.DEBIT.value,
                "amount_nusd": -item.amount_nusd,
                "balance_after_nusd": balances[item.user_id],
                "idempotency_key": item.request_id,
                "request_id": item.request_id,
                "reason": item.reason,
            }
        )
    touched = {d.user_id for d in debits}
    table = cast(Table, Wallet.__table__)
    await session.execute(
        update(table)
        .where(table.c.user_id == bindparam("uid"))
        .values(balance_nusd=bindparam("balance"), updated_at=func.now()),
        [{"uid": uid, "balance": balances[uid]} for uid in sorted(touched)],
    )
    if session.get_bind().dialect.name == "postgresql":
        await insert_unnest(session, cast(Table, LedgerTransaction.__table__), rows)
    else:
        await session.execute(insert(LedgerTransaction), rows)
    return len(rows)


# --- reports and queries ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalletDrift:
    user_id: str
    balance_nusd: int
    ledger_sum_nusd: int

    @property
    def drift_nusd(self) -> int:
        return self.balance_nusd - self.ledger_sum_nusd


async def wallet_drift(session: AsyncSession) -> tuple[int, list[WalletDrift]]:
    """(wallets checked, those whose balance is not the sum of their ledger rows)."""
    sums = (
        select(
            LedgerTransaction.user_id.label("user_id"),
            func.sum(LedgerTransaction.amount_nusd).label("total"),
        )
        .group_by(LedgerTransaction.user_id)
        .subquery()
    )
    total = func.coalesce(sums.c.total, 0)
    stmt = (
        select(Wallet.user_id, Wallet.balance_nusd, total)
        .outerjoin(sums, sums.c.user_id == Wallet.user_id)
        .order_by(Wallet.user_id)
    )
    checked = 0
    drifted: list[WalletDrift] = []
    for user_id, balance, ledger_total in (await session.execute(stmt)).all():
        checked += 1
        if int(balance) != int(ledger_total):
            drifted.append(WalletDrift(user_id, int(balance), int(ledger_total)))
    return checked, drifted


async def debits_without_usage(session: AsyncSession, *, limit: int = 1000) -> list[str]:
    """Request ids charged in the ledger that have no usage row (settlement writes both)."""
    from shared.db.models import UsageRecord

    stmt = (
        select(LedgerTransaction.request_id)
        .outerjoin(UsageRecord, UsageRecord.request_id == LedgerTransaction.request_id)
        .where(LedgerTransaction.kind == LedgerKind.DEBIT.value, UsageRecord.id.is_(None))
        .order_by(LedgerTransaction.id)
        .limit(limit)
    )
    return [str(rid) for rid in (await session.scalars(stmt)).all()]


async def transactions_page(
    session: AsyncSession,
    *,
    user_id: str | None = None,
    kinds: Iterable[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> Sequence[LedgerTransaction]:
    """Ledger rows newest first, filtered; pass the last row's id as `before_id` for
    the next page (ids follow insertion order, so pages never skip or repeat a row)."""
    stmt = select(LedgerTransaction).order_by(LedgerTransaction.id.desc()).limit(limit)
    if user_id is not None:
        stmt = stmt.where(LedgerTransaction.user_id == user_id)
    kind_list = [LedgerKind(k).value for k in kinds]
    if kind_list:
        stmt = stmt.where(LedgerTransaction.kind.in_(kind_list))
    if since is not None:
        stmt = stmt.where(LedgerTransaction.created_at >= since)
    if until is not None:
        stmt = stmt.where(LedgerTransaction.created_at < until)
    if before_id is not None:
        stmt = stmt.where(LedgerTransaction.id < before_id)
    return (await session.scalars(stmt)).all()
