"""The `gateway` console script: run services, migrate the database, admin tasks.

    gateway run {api,worker,billing,all}
    gateway migrate
    gateway users create|list
    gateway keys create|list|revoke
    gateway wallet credit|show
    gateway fake-providers ...

Admin commands talk to the database named by DATABASE_URL (or the embedded SQLite
file under var/); they refuse to run on a schema that `gateway migrate` has not
brought up to date. Exit codes: 0 done, 1 failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from shared.money import format_usd, usd_to_nusd
from shared.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

T = TypeVar("T")

REDIS_PING_TIMEOUT_S = 1.0


class CommandError(Exception):
    """A failure to report in one line, without a traceback."""


def display_url(url: str) -> str:
    """A database or Redis URL fit to print: the password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (redis://...): mask by hand
        scheme, sep, rest = url.partition("://")
        creds, at, host = rest.rpartition("@")
        if not (sep and at):
            return url
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url


# --- database plumbing ------------------------------------------------------------------


async def _with_sessions(
    settings: Settings, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]
) -> T:
    """Run `work` against a database whose schema is current; close the engine after."""
    from shared.db.engine import create_engine, create_sessionmaker
    from shared.db.migrate import current_revision, head_revision

    url = settings.effective_database_url
    engine = create_engine(url, pool_size=2)
    try:
        try:
            revision = await current_revision(engine)
        except (SQLAlchemyError, OSError) as exc:
            raise CommandError(f"cannot reach database {display_url(url)}: {exc}") from exc
        if revision is None:
            raise CommandError(
                f"database {display_url(url)} has no gateway schema: run `gateway migrate` first"
            )
        if revision != head_revision():
            raise CommandError(
                f"database {display_url(url)} schema is at {revision}, not "
                f"{head_revision()}: run `gateway migrate` first"
            )
        return await work(create_sessionmaker(engine))
    finally:
        await engine.dispose()


def _run_db(settings: Settings, work: Callable[[Any], Awaitable[int]]) -> int:
    return asyncio.run(_with_sessions(settings, work))


# --- Redis (optional: admin commands work without it) ----------------------------------


def _redis_url(settings: Settings) -> str | None:
    try:
        from services.runner import resolve_redis_url
    except ImportError:
        return settings.redis_url or None
    return resolve_redis_url(settings)


async def _connect_redis(settings: Settings) -> tuple[Redis | None, str]:
    """A Redis client that answered a PING within a second, or None and the reason."""
    from redis.asyncio import Redis as RedisClient

    url = _redis_url(settings)
    if not url:
        return None, "no REDIS_URL set and no embedded Redis running"
    client = RedisClient.from_url(
        url,
        socket_connect_timeout=REDIS_PING_TIMEOUT_S,
        socket_timeout=REDIS_PING_TIMEOUT_S,
    )
    try:
        await asyncio.wait_for(client.ping(), timeout=REDIS_PING_TIMEOUT_S)
    except Exception as exc:
        await client.aclose()
        return None, f"Redis at {display_url(url)} did not answer ({type(exc).__name__})"
    return client, ""


# --- commands ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from services.runner import run_service

    return int(run_service(args.service) or 0)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.migrate import head_revision, upgrade_to_head

    url = settings.effective_database_url
    print(f"migrating {display_url(url)} ...")
    try:
        upgrade_to_head(url)
    except (SQLAlchemyError, OSError) as exc:
        raise CommandError(f"migration failed: {exc}") from exc
    print(f"database is at revision {head_revision()} (head)")
    return 0


def cmd_users_create(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.repositories import users

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        async with sessions.begin() as session:
            user = await users.create_user(session, email=args.email, name=args.name)
        print(user.id)
        return 0

    return _run_db(settings, work)


def cmd_users_list(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.repositories import ledger, users

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        async with sessions() as session:
            rows = await users.list_users(session, limit=args.limit)
            balances = [await ledger.get_balance(session, u.id) for u in rows]
        if not rows:
            print("no users")
            return 0
        print(f"{'ID':<28} {'BALANCE (USD)':>20}  {'EMAIL':<30} NAME")
        for user, balance in zip(rows, balances, strict=True):
            print(
                f"{user.id:<28} {format_usd(balance or 0):>20}  "
                f"{user.email or '-':<30} {user.name or '-'}"
            )
        return 0

    return _run_db(settings, work)


async def _require_user(session: AsyncSession, user_id: str) -> None:
    from shared.db.repositories import users

    if await users.get_user(session, user_id) is None:
        raise CommandError(f"no such user: {user_id}")


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.repositories import api_keys

    if args.expires_days is not None and args.expires_days <= 0:
        raise CommandError("--expires-days must be a positive number of days")
    expires_at = (
        datetime.now(UTC) + timedelta(days=args.expires_days)
        if args.expires_days is not None
        else None
    )

    allowed_models = _catalog_model_ids(settings, args.models) if args.models else None
    spend_limit = parse_usd_amount(args.monthly_limit) if args.monthly_limit else None
    secret = _key_secret(settings)

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        async with sessions.begin() as session:
            await _require_user(session, args.user)
            key, plaintext = await api_keys.create_api_key(
                session,
                args.user,
                secret=secret,
                name=args.name,
                expires_at=expires_at,
                allowed_models=allowed_models,
                rate_limit_rpm=args.rpm,
                monthly_spend_limit_nusd=spend_limit,
            )
        # The key alone on stdout, so `KEY=$(gateway keys create ...)` works.
        print(plaintext)
        expiry = f", expires {expires_at:%Y-%m-%d %H:%M} UTC" if expires_at else ""
        print(
            f"created key {key.id} for {args.user}{expiry}.\n"
            f"{_key_scope(key.allowed_models, key.rate_limit_rpm, key.monthly_spend_limit_nusd)}\n"
            "Store it now: it will not be shown again.",
            file=sys.stderr,
        )
        return 0

    return _run_db(settings, work)


def _key_secret(settings: Settings) -> bytes:
    from shared.key_secret import KeySecretError, load_key_secret

    try:
        return load_key_secret(settings).value
    except (KeySecretError, OSError) as exc:
        raise CommandError(str(exc)) from exc


def _catalog_model_ids(settings: Settings, raw: str) -> list[str]:
    """`--models a,b` as canonical catalog ids; unknown names are an error."""
    from shared.catalog import load_catalog

    catalog = load_catalog(settings.catalog_path)
    ids: list[str] = []
    for name in (n.strip() for n in raw.split(",")):
        if not name:
            continue
        model = catalog.find(name)
        if model is None:
            raise CommandError(f"unknown model {name!r}: `GET /v1/models` lists the models")
        if model.id not in ids:
            ids.append(model.id)
    if not ids:
        raise CommandError("--models needs at least one model name")
    return ids


def _key_scope(models: list[str] | None, rpm: int | None, limit_nusd: int | None) -> str:
    return (
        f"models: {', '.join(models) if models is not None else 'all'}; "
        f"rate limit: {f'{rpm}/min' if rpm else 'default'}; "
        f"monthly limit: {f'{format_usd(limit_nusd)} USD' if limit_nusd is not None else 'none'}"
    )


def _key_status(revoked_at: datetime | None, expires_at: datetime | None, now: datetime) -> str:
    if revoked_at is not None:
        return "revoked"
    if expires_at is not None:
        aware = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)
        if aware <= now:
            return "expired"
    return "active"


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M}" if value else "-"


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.repositories import api_keys

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        async with sessions() as session:
            await _require_user(session, args.user)
            rows = await api_keys.list_api_keys(session, args.user)
        if not rows:
            print(f"no keys for {args.user}")
            return 0
        now = datetime.now(UTC)
        print(f"{'ID':<28} {'PREFIX':<10} {'STATUS':<8} {'CREATED':<16} {'EXPIRES':<16} NAME")
        for key in rows:
            status = _key_status(key.revoked_at, key.expires_at, now)
            print(
                f"{key.id:<28} {key.display_prefix:<10} {status:<8} "
                f"{_when(key.created_at):<16} {_when(key.expires_at):<16} {key.name or '-'}"
            )
        return 0

    return _run_db(settings, work)


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.repositories import api_keys

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        async with sessions.begin() as session:
            key = await api_keys.revoke_api_key(session, args.key_id)
        if key is None:
            raise CommandError(f"no such key: {args.key_id}")
        print(f"revoked {key.id} ({key.display_prefix}) of {key.user_id}")
        await _broadcast_revocation(settings, key.id)
        return 0

    return _run_db(settings, work)


async def _broadcast_revocation(settings: Settings, key_id: str) -> None:
    """Tell every api process to drop the key from its cache now (not at the TTL)."""
    from services.api.key_events import publish_key_revoked

    redis, why_not = await _connect_redis(settings)
    if redis is None:
        print(
            f"note: {why_not}; api processes drop the key from their caches within "
            f"{settings.cache_ttl_s} s.",
            file=sys.stderr,
        )
        return
    try:
        heard = await publish_key_revoked(redis, key_id)
    finally:
        await redis.aclose()
    print(f"{heard} api process(es) dropped it from their caches", file=sys.stderr)


def parse_usd_amount(raw: str) -> int:
    """A positive decimal USD string (e.g. "10", "0.25") as nano-dollars."""
    try:
        amount = Decimal(raw.strip())
    except InvalidOperation as exc:
        raise CommandError(f"not a decimal amount: {raw!r}") from exc
    if not amount.is_finite() or amount <= 0:
        raise CommandError(f"amount must be a positive number of USD, got {raw!r}")
    try:
        return usd_to_nusd(amount)
    except ValueError as exc:
        raise CommandError(f"amount {raw} is finer than one nano-dollar (9 decimals)") from exc


async def _invalidate_cached_balance(settings: Settings, user_id: str) -> None:
    from shared.redis.funds import Funds

    redis, why_not = await _connect_redis(settings)
    if redis is None:
        print(
            f"note: {why_not}; the cached balance was not invalidated "
            f"(it expires within {settings.balance_cache_ttl_s} s).",
            file=sys.stderr,
        )
        return
    try:
        await Funds(redis).invalidate_balance(user_id)
    finally:
        await redis.aclose()


def cmd_wallet_credit(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.repositories import ledger

    amount_nusd = parse_usd_amount(args.amount)
    idempotency_key = args.idempotency_key or f"cli:{uuid.uuid4()}"

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        try:
            async with sessions.begin() as session:
                await _require_user(session, args.user)
                row, created = await ledger.credit(
                    session,
                    args.user,
                    amount_nusd,
                    idempotency_key=idempotency_key,
                    reason=args.reason,
                )
        except ledger.LedgerError as exc:
            raise CommandError(str(exc)) from exc
        if created:
            await _invalidate_cached_balance(settings, args.user)
            print(f"credited {format_usd(amount_nusd)} USD to {args.user}")
        else:
            print(f"idempotency key {idempotency_key!r} was already used: nothing changed")
        async with sessions() as session:
            balance = await ledger.get_balance(session, args.user)
        print(f"balance: {format_usd(balance or 0)} USD (transaction {row.id})")
        return 0

    return _run_db(settings, work)


def cmd_wallet_show(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.repositories import ledger
    from shared.redis.funds import Funds

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        async with sessions() as session:
            balance = await ledger.get_balance(session, args.user)
            if balance is None:
                raise CommandError(f"no such user: {args.user}")
            total = await ledger.ledger_sum(session, args.user)
            rows = await ledger.list_transactions(session, args.user, limit=args.limit)
        print(f"user:    {args.user}")
        print(f"balance: {format_usd(balance)} USD")
        if total != balance:
            print(f"WARNING: ledger sums to {format_usd(total)} USD, not the balance")
        redis, why_not = await _connect_redis(settings)
        if redis is None:
            print(f"held:    unknown ({why_not})")
        else:
            try:
                held = await Funds(redis).held_nusd(args.user)
            finally:
                await redis.aclose()
            print(f"held:    {format_usd(held)} USD by requests in flight")
        if not rows:
            print("no transactions")
            return 0
        print(f"\n{'ID':>8} {'WHEN':<16} {'KIND':<10} {'AMOUNT (USD)':>18} {'BALANCE':>18}  REASON")
        for tx in rows:
            print(
                f"{tx.id:>8} {_when(tx.created_at):<16} {tx.kind:<10} "
                f"{format_usd(tx.amount_nusd):>18} {format_usd(tx.balance_after_nusd):>18}  "
                f"{tx.reason or tx.idempotency_key}"
            )
        return 0

    return _run_db(settings, work)


def cmd_fake_providers(args: argparse.Namespace, settings: Settings) -> int:
    from services.fake_provider.cli import main as fake_main

    return int(fake_main(args) or 0)


# --- parser ------------------------------------------------------------------------------


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {raw}")
    return value


def _add_fake_providers(sub: Any) -> None:
    parser = sub.add_parser(
        "fake-providers",
        help="serve scripted fake LLM providers (for demos and tests)",
        description="Serve fake OpenAI/Anthropic/Google-compatible providers locally.",
    )
    parser.set_defaults(handler=cmd_fake_providers)
    try:
        from services.fake_provider.cli import add_arguments
    except ImportError:
        # Keep `gateway --help` working on a checkout without the fake provider.
        return
    add_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="OpenAI-compatible LLM gateway: run its services and administer it. "
        "Configuration comes from the environment and .env (DATABASE_URL, REDIS_URL, ...).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a service (or all of them in one process)",
        description="Run one service until interrupted. `all` runs api, worker and billing "
        "together, with embedded Redis and SQLite when REDIS_URL and DATABASE_URL are unset.",
    )
    run.add_argument("service", choices=["api", "worker", "billing", "all"])
    run.set_defaults(handler=cmd_run)

    migrate = sub.add_parser(
        "migrate",
        help="create or upgrade the database schema",
        description="Apply the Alembic migrations to DATABASE_URL (or the embedded SQLite "
        "file). Safe to run again.",
    )
    migrate.set_defaults(handler=cmd_migrate)

    users = sub.add_parser("users", help="create and list users", description="Manage users.")
    users_sub = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    users_create = users_sub.add_parser(
        "create",
        help="create a user (with an empty wallet); prints its id",
        description="Create a user and its wallet (balance 0). Prints the new user id.",
    )
    users_create.add_argument("--email", help="contact e-mail")
    users_create.add_argument("--name", help="display name")
    users_create.set_defaults(handler=cmd_users_create)
    users_list = users_sub.add_parser(
        "list", help="list users with their balances", description="List users, oldest first."
    )
    users_list.add_argument("--limit", type=_positive_int, default=100, help="at most N (100)")
    users_list.set_defaults(handler=cmd_users_list)

    keys = sub.add_parser("keys", help="manage API keys", description="Manage API keys.")
    keys_sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    keys_create = keys_sub.add_parser(
        "create",
        help="create an API key; prints it once",
        description="Create an API key for a user. The key is printed once on stdout and "
        "only its hash is stored: it cannot be shown again.",
    )
    keys_create.add_argument("--user", required=True, metavar="USER_ID", help="owner's user id")
    keys_create.add_argument("--name", help="a label to recognise the key")
    keys_create.add_argument(
        "--expires-days", type=_positive_int, metavar="D", help="expire after D days (never)"
    )
    keys_create.add_argument(
        "--models", metavar="A,B", help="only these models (comma-separated; default: all)"
    )
    keys_create.add_argument(
        "--rpm", type=_positive_int, metavar="N",
        help="requests per minute for this key (default: RATE_LIMIT_REQUESTS_PER_MINUTE)",
    )  # fmt: skip
    keys_create.add_argument(
        "--monthly-limit", metavar="USD", help="most this key may spend per calendar month (UTC)"
    )
    keys_create.set_defaults(handler=cmd_keys_create)
    keys_list = keys_sub.add_parser(
        "list",
        help="list a user's keys",
        description="List a user's API keys (prefix and status only).",
    )
    keys_list.add_argument("--user", required=True, metavar="USER_ID", help="owner's user id")
    keys_list.set_defaults(handler=cmd_keys_list)
    keys_revoke = keys_sub.add_parser(
        "revoke",
        help="revoke a key",
        description="Revoke an API key by its id (key_...); it stops working at once.",
    )
    keys_revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id, e.g. key_3f2a...")
    keys_revoke.set_defaults(handler=cmd_keys_revoke)

    wallet = sub.add_parser("wallet", help="credit and inspect wallets", description="Wallets.")
    wallet_sub = wallet.add_subparsers(dest="action", required=True, metavar="ACTION")
    credit = wallet_sub.add_parser(
        "credit",
        help="add funds to a user's wallet",
        description="Append a credit to the user's ledger. The same --idempotency-key "
        "twice credits once, so a retried command cannot pay twice.",
    )
    credit.add_argument("--user", required=True, metavar="USER_ID", help="the user's id")
    credit.add_argument(
        "--amount", required=True, metavar="USD", help="decimal USD, e.g. 10 or 0.25"
    )
    credit.add_argument("--reason", default="manual credit", help="recorded with the credit")
    credit.add_argument(
        "--idempotency-key", metavar="K", help="unique key for this credit (cli:<uuid4>)"
    )
    credit.set_defaults(handler=cmd_wallet_credit)
    show = wallet_sub.add_parser(
        "show",
        help="show a wallet's balance, holds and last transactions",
        description="Show the settled balance, the amount held by requests in flight "
        "(when Redis is reachable) and the latest ledger rows.",
    )
    show.add_argument("--user", required=True, metavar="USER_ID", help="the user's id")
    show.add_argument("--limit", type=_positive_int, default=20, help="transactions shown (20)")
    show.set_defaults(handler=cmd_wallet_show)

    from services.cli_billing import add_billing_commands

    add_billing_commands(sub)
    _add_fake_providers(sub)
    from services.cli_usage import add_usage_commands

    add_usage_commands(sub)  # gateway usage providers|spend
    from services.cli_prefs import add_preference_commands

    add_preference_commands(sub)  # gateway prefs show|set|clear
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    try:
        return int(args.handler(args, settings))
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        # The database went away mid-command, or rejected it: one line, no traceback.
        detail = getattr(exc, "orig", None) or exc
        print(f"error: database error: {type(detail).__name__}: {detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
