"""`gateway prefs ...`: a user's routing preferences, from the command line.

    gateway prefs show --user ID
    gateway prefs set --user ID [--order a,b] [--only a,b] [--ignore a,b] [--sort price|latency|throughput] [--no-fallbacks]
    gateway prefs clear --user ID

The same shape as a request's `provider` object and the admin API
(`PUT /admin/users/{id}/preferences`). A request's own `provider` fields override these
field by field. Running api processes see a change within CACHE_TTL_SECONDS.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import orjson

from shared.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


def _names(raw: str) -> list[str]:
    return [name.strip() for name in raw.split(",") if name.strip()]


def _routing(args: argparse.Namespace) -> dict[str, Any]:
    routing: dict[str, Any] = {}
    for field in ("order", "only", "ignore"):
        value = getattr(args, field)
        if value is not None:
            routing[field] = _names(value)
    if args.sort:
        routing["sort"] = args.sort
    if args.no_fallbacks:
        routing["allow_fallbacks"] = False
    return routing


def cmd_prefs(args: argparse.Namespace, settings: Settings) -> int:
    from services.api.validation import validate_provider_prefs
    from services.cli import CommandError, _run_db
    from shared.db.repositories import preferences, users
    from shared.errors import InvalidRequest

    routing: dict[str, Any] | None = None
    if args.action == "set":
        routing = _routing(args)
        try:
            validate_provider_prefs(routing)
        except InvalidRequest as exc:
            raise CommandError(exc.message) from exc

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        async with sessions.begin() as session:
            if await users.get_user(session, args.user) is None:
                raise CommandError(f"no user {args.user!r}")
            if args.action == "set":
                await preferences.set_routing(session, args.user, routing or None)
            elif args.action == "clear":
                await preferences.set_routing(session, args.user, None)
            current = await preferences.get_routing(session, args.user)
        print(orjson.dumps({"user_id": args.user, "provider": current or {}}).decode())
        return 0

    return _run_db(settings, work)


def add_preference_commands(sub: Any) -> None:
    prefs = sub.add_parser(
        "prefs",
        help="a user's routing preferences",
        description="Show, set or clear a user's stored routing preferences (the shape of a "
        "request's `provider` object). Requests override them field by field.",
    )
    actions = prefs.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("show", "print them"), ("clear", "remove them")):
        parser = actions.add_parser(name, help=text, description=f"{text.capitalize()}.")
        parser.add_argument("--user", required=True, metavar="USER_ID", help="the user's id")
        parser.set_defaults(handler=cmd_prefs)
    setter = actions.add_parser(
        "set",
        help="replace them",
        description="Replace a user's routing preferences with the given fields.",
    )
    setter.add_argument("--user", required=True, metavar="USER_ID", help="the user's id")
    setter.add_argument("--order", metavar="A,B", help="providers to try first, in this order")
    setter.add_argument("--only", metavar="A,B", help="use only these providers")
    setter.add_argument("--ignore", metavar="A,B", help="never use these providers")
    setter.add_argument(
        "--sort", choices=("price", "latency", "throughput"), help="order by this figure"
    )
    setter.add_argument(
        "--no-fallbacks", action="store_true", help="try only the first candidate (or --order)"
    )
    setter.set_defaults(handler=cmd_prefs)
