"""`gateway billing ...`: reconciliation and the ledger tasks an operator runs by hand.

    gateway billing reconcile [--no-repair] [--json] [--stuck-after-s S]
    gateway billing adjust   --user U --amount USD (+/-) --reason R [--idempotency-key K]
    gateway billing refund   --user U --amount USD --reason R [--request-id RID] [--idempotency-key K]
    gateway billing transactions [--user U] [--kind credit,debit,...] [--from D] [--to D] [--limit N]
    gateway billing usage    [--group-by user,model,provider,day] [--user U] [--from D] [--to D]
    gateway billing export   [--user U] [--from D] [--to D] [--output FILE]   (CSV)

`reconcile` exits 0 when everything adds up and 3 when it found inconsistencies (so a
cron job or a monitor can act on it); it repairs stale holds unless `--no-repair`.
"""

from __future__ import annotations

import argparse
import csv
import sys
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from shared.money import format_usd, usd_to_nusd
from shared.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

EXIT_INCONSISTENT = 3
KINDS = ("credit", "debit", "refund", "adjustment")
DIMENSIONS = ("user", "model", "provider", "day")


def _cli() -> Any:
    from services import cli  # the shared plumbing: sessions, Redis, CommandError

    return cli


def signed_usd(raw: str) -> int:
    """A non-zero decimal USD amount (either sign) as nano-dollars."""
    try:
        amount = Decimal(raw.strip())
        if not amount.is_finite() or amount == 0:
            raise InvalidOperation
        return usd_to_nusd(amount)
    except (ArithmeticError, ValueError) as exc:
        raise _cli().CommandError(
            f"amount must be a non-zero decimal number of USD with at most 9 decimals, got {raw!r}"
        ) from exc


def day_or_time(raw: str, *, end: bool = False) -> datetime:
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            return datetime.combine(day + timedelta(days=1) if end else day, time.min, UTC)
        moment = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise _cli().CommandError(f"not an ISO 8601 date or date-time: {raw!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _range(args: argparse.Namespace) -> tuple[datetime | None, datetime | None]:
    since = day_or_time(args.since) if args.since else None
    until = day_or_time(args.until, end=True) if args.until else None
    return since, until


# --- reconcile -----------------------------------------------------------------------------


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from services.billing.reconcile import reconcile

    cli = _cli()

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        redis, why_not = await cli._connect_redis(settings)
        if redis is None:
            raise cli.CommandError(f"reconciliation needs Redis: {why_not}")
        try:
            report = await reconcile(
                sessions, redis, stuck_after_ms=args.stuck_after_s * 1000, repair=not args.no_repair
            )
        finally:
            await redis.aclose()
        if args.json:
            print(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
        else:
            print(report.summary())
            for event in report.unsettled_events[:20]:
                print(f"  unsettled {event.state} event {event.entry_id} request {event.request_id} "
                      f"user {event.user_id} age {event.age_ms // 1000} s")  # fmt: skip
            for rid in report.usage_without_debit[:20]:
                print(f"  usage without debit: {rid}")
            for rid in report.debits_without_usage[:20]:
                print(f"  debit without usage: {rid}")
            if not report.problems:
                print("no drift: every wallet equals the sum of its ledger")
        return EXIT_INCONSISTENT if report.problems else 0

    return int(cli._run_db(settings, work))


# --- adjustments and refunds ---------------------------------------------------------------


def _movement(args: argparse.Namespace, settings: Settings, kind: str) -> int:
    from shared.db.repositories import ledger

    cli = _cli()
    amount = signed_usd(args.amount)
    if kind == "refund" and amount < 0:
        raise cli.CommandError("a refund is positive; use `billing adjust` to take money")
    key = args.idempotency_key or f"cli:{kind}:{uuid.uuid4()}"

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        try:
            async with sessions.begin() as session:
                await cli._require_user(session, args.user)
                if kind == "adjustment":
                    row, created = await ledger.adjust(
                        session, args.user, amount, idempotency_key=key, reason=args.reason
                    )
                else:
                    row, created = await ledger.refund(
                        session, args.user, amount, idempotency_key=key, reason=args.reason,
                        reference=args.request_id,
                    )  # fmt: skip
        except (ledger.LedgerError, ValueError) as exc:
            raise cli.CommandError(str(exc)) from exc
        if created:
            await cli._invalidate_cached_balance(settings, args.user)
            print(f"{kind} of {format_usd(amount)} USD recorded for {args.user}")
        else:
            print(f"idempotency key {key!r} was already used: nothing changed")
        print(f"balance: {format_usd(row.balance_after_nusd)} USD after transaction {row.id}")
        return 0

    return int(cli._run_db(settings, work))


def cmd_adjust(args: argparse.Namespace, settings: Settings) -> int:
    return _movement(args, settings, "adjustment")


def cmd_refund(args: argparse.Namespace, settings: Settings) -> int:
    return _movement(args, settings, "refund")


# --- listings ------------------------------------------------------------------------------


def cmd_transactions(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.repositories import ledger

    cli = _cli()
    kinds = [k for k in (args.kind or "").split(",") if k]
    if any(k not in KINDS for k in kinds):
        raise cli.CommandError(f"--kind takes {', '.join(KINDS)}")
    since, until = _range(args)

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        async with sessions() as session:
            rows = await ledger.transactions_page(
                session, user_id=args.user, kinds=kinds, since=since, until=until, limit=args.limit
            )
        if not rows:
            print("no transactions")
            return 0
        print(
            f"{'ID':>8} {'WHEN':<16} {'USER':<28} {'KIND':<10} {'AMOUNT (USD)':>18} {'BALANCE':>18}  REASON"
        )
        for tx in rows:
            print(
                f"{tx.id:>8} {cli._when(tx.created_at):<16} {tx.user_id:<28} {tx.kind:<10} "
                f"{format_usd(tx.amount_nusd):>18} {format_usd(tx.balance_after_nusd):>18}  "
                f"{tx.reason or tx.idempotency_key}"
            )
        return 0

    return int(cli._run_db(settings, work))


def cmd_usage(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.repositories import usage

    cli = _cli()
    group_by = [g for g in args.group_by.split(",") if g]
    if any(g not in DIMENSIONS for g in group_by):
        raise cli.CommandError(f"--group-by takes {', '.join(DIMENSIONS)}")
    since, until = _range(args)

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        async with sessions() as session:
            rows = await usage.summarize(
                session, group_by=group_by, user_id=args.user, since=since, until=until
            )
        if not rows:
            print("no usage")
            return 0
        head = "".join(f"{g.upper():<28} " for g in group_by)
        print(f"{head}{'REQUESTS':>9} {'PROMPT':>10} {'COMPLETION':>10} {'COST (USD)':>18}")
        for row in rows:
            keys = "".join(f"{row[g] or '-'!s:<28} " for g in group_by)
            print(
                f"{keys}{row['requests']:>9} {row['prompt_tokens']:>10} "
                f"{row['completion_tokens']:>10} {format_usd(row['cost_nusd']):>18}"
            )
        return 0

    return int(cli._run_db(settings, work))


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from services.api.admin_views import USAGE_CSV_COLUMNS, usage_view
    from shared.db.repositories import usage

    cli = _cli()
    since, until = _range(args)

    out: TextIO = open(args.output, "w", newline="") if args.output else sys.stdout  # noqa: SIM115

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(USAGE_CSV_COLUMNS)
        before: int | None = None
        count = 0
        async with sessions() as session:
            while True:
                rows = await usage.usage_page(
                    session, user_id=args.user, since=since, until=until,
                    before_id=before, limit=1000,
                )  # fmt: skip
                for row in rows:
                    view = usage_view(row)
                    writer.writerow([view.get(c) for c in USAGE_CSV_COLUMNS])
                count += len(rows)
                if len(rows) < 1000:
                    break
                before = rows[-1].id
        print(f"exported {count} usage row(s)", file=sys.stderr)
        return 0

    try:
        return int(cli._run_db(settings, work))
    finally:
        if out is not sys.stdout:
            out.close()


# --- parser --------------------------------------------------------------------------------


def _add_range(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", metavar="USER_ID", help="only this user")
    parser.add_argument("--from", dest="since", metavar="DATE", help="ISO date or date-time (UTC)")
    parser.add_argument(
        "--to", dest="until", metavar="DATE", help="ISO date (inclusive) or date-time"
    )


def add_billing_commands(sub: Any) -> None:
    """Register `gateway billing ...` on the CLI's top-level subparsers."""
    billing = sub.add_parser(
        "billing",
        help="reconcile, adjust, refund, list transactions and usage",
        description="Billing tasks: reconciliation, adjustments and refunds, listings, CSV.",
    )
    actions = billing.add_subparsers(dest="action", required=True, metavar="ACTION")

    rec = actions.add_parser(
        "reconcile",
        help="check wallets against the ledger, unsettled events, holds; exit 3 on drift",
        description="Check every wallet against the sum of its ledger, completion events "
        "never settled, holds never released, usage rows without debits and debits without "
        "usage rows. Stale holds are repaired (unless --no-repair); the rest is reported. "
        "Exit code 3 when anything needs a person.",
    )
    rec.add_argument("--no-repair", action="store_true", help="report stale holds, change nothing")
    rec.add_argument("--json", action="store_true", help="print the whole report as JSON")
    rec.add_argument(
        "--stuck-after-s", type=int, default=300, metavar="S",
        help="events unsettled for longer than S seconds are reported (300)",
    )  # fmt: skip
    rec.set_defaults(handler=cmd_reconcile)

    for name, handler, text in (
        ("adjust", cmd_adjust, "an operator's correction, positive or negative"),
        ("refund", cmd_refund, "give money back for a request"),
    ):
        parser = actions.add_parser(name, help=text, description=f"Append a ledger row: {text}.")
        parser.add_argument("--user", required=True, metavar="USER_ID")
        parser.add_argument(
            "--amount", required=True, metavar="USD", help="decimal USD, e.g. -0.25"
        )
        parser.add_argument("--reason", required=True, help="why (kept in the ledger)")
        parser.add_argument(
            "--idempotency-key", metavar="K", help="the same key twice applies once"
        )
        if name == "refund":
            parser.add_argument("--request-id", metavar="RID", help="the request refunded")
        parser.set_defaults(handler=handler)

    tx = actions.add_parser("transactions", help="list ledger rows, newest first")
    _add_range(tx)
    tx.add_argument("--kind", help=f"comma-separated: {', '.join(KINDS)}")
    tx.add_argument("--limit", type=int, default=50, help="at most N rows (50)")
    tx.set_defaults(handler=cmd_transactions)

    use = actions.add_parser("usage", help="requests, tokens and cost per group")
    _add_range(use)
    use.add_argument(
        "--group-by", default="model", help=f"comma-separated: {', '.join(DIMENSIONS)}"
    )
    use.set_defaults(handler=cmd_usage)

    export = actions.add_parser("export", help="every usage row as CSV")
    _add_range(export)
    export.add_argument("--output", "-o", metavar="FILE", help="write here (default: stdout)")
    export.set_defaults(handler=cmd_export)
