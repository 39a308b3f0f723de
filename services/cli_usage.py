"""`gateway usage ...`: the operator's usage queries, from the command line.

    gateway usage providers [--from T] [--to T] [--json]
    gateway usage spend [--group user|model|day] [--from T] [--to T] [--limit N] [--json]

Same figures as the admin API (`GET /admin/stats/providers`, `/admin/stats/spend`):
`--json` prints exactly what the API returns. Times are ISO 8601 (UTC unless an offset
is given); the default range is the last 24 hours.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import orjson

from shared.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.stats_report import TimeRange


def _window(args: argparse.Namespace) -> TimeRange:
    from services.cli import CommandError
    from shared.stats_report import RangeError, TimeRange

    try:
        return TimeRange.parse(args.start, args.end)
    except RangeError as exc:
        raise CommandError(f"--{exc.param}: {exc}") from exc


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


def _print_table(headers: list[str], rows: list[list[Any]], right_from: int) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if i >= right_from else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    print(line(headers))
    for row in cells:
        print(line(row))


def cmd_usage_providers(args: argparse.Namespace, settings: Settings) -> int:
    from services.cli import _run_db
    from shared.stats_report import providers_report

    window = _window(args)

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        async with sessions() as session:
            report = await providers_report(session, window)
        if args.json:
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
            return 0
        print(f"providers from {report['from']} to {report['to']}")
        if not report["providers"]:
            print("no provider was called in this range")
            return 0
        rows = [
            [
                r["provider"] or "(none)",
                r["model"] or "(none)",
                r["attempts"],
                "-" if r["success_rate"] is None else f"{r['success_rate'] * 100:.1f}%",
                r["technical_errors"],
                r["business_errors"],
                r["requests"],
                r["latency_ms"]["p50"],
                r["latency_ms"]["p90"],
                r["latency_ms"]["p99"],
                r["ttft_ms"]["p50"],
                r["ttft_ms"]["p90"],
                r["ttft_ms"]["p99"],
                r["tokens_per_second"]["p50"],
            ]
            for r in report["providers"]
        ]
        headers = [
            "PROVIDER", "MODEL", "CALLS", "SUCCESS", "TECH_ERR", "BIZ_ERR", "REQUESTS",
            "LAT_P50", "LAT_P90", "LAT_P99", "TTFT_P50", "TTFT_P90", "TTFT_P99", "TOK/S_P50",
        ]  # fmt: skip
        _print_table(headers, rows, right_from=2)
        print("latency and TTFT in ms, from queueing the request; over requests that succeeded")
        return 0

    return _run_db(settings, work)


def cmd_usage_spend(args: argparse.Namespace, settings: Settings) -> int:
    from services.cli import _run_db
    from shared.db.repositories.stats import SpendGroup
    from shared.stats_report import spend_report

    window = _window(args)
    group = SpendGroup(args.group)

    async def work(sessions: async_sessionmaker[AsyncSession]) -> int:
        async with sessions() as session:
            report = await spend_report(session, window, group, limit=args.limit)
        if args.json:
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
            return 0
        print(f"spend by {group.value} from {report['from']} to {report['to']}")
        if not report["rows"]:
            print("no spend in this range")
            return 0
        with_label = group is SpendGroup.USER
        headers = [group.value.upper(), *(["EMAIL/NAME"] if with_label else [])]
        headers += ["REQUESTS", "SPEND (USD)", "TOKENS_IN", "TOKENS_OUT"]
        rows = [
            [
                r[group.value],
                *([r.get("label") or "-"] if with_label else []),
                r["requests"],
                r["cost_usd"],
                r["prompt_tokens"],
                r["completion_tokens"],
            ]
            for r in report["rows"]
        ]
        _print_table(headers, rows, right_from=2 if with_label else 1)
        total = report["total"]
        print(f"total: {total['requests']} requests, {total['cost_usd']} USD")
        return 0

    return _run_db(settings, work)


def add_usage_commands(sub: Any) -> None:
    """Register `gateway usage providers|spend` on the top-level subparsers."""
    from services.cli import _positive_int

    usage = sub.add_parser(
        "usage",
        help="usage queries: provider health and spend",
        description="Usage queries over the settled usage records (the admin API's figures).",
    )
    actions = usage.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--from", dest="start", metavar="T", help="ISO 8601 start (default: 24 h ago)"
        )
        parser.add_argument("--to", dest="end", metavar="T", help="ISO 8601 end (default: now)")
        parser.add_argument("--json", action="store_true", help="print the admin API's JSON")

    providers = actions.add_parser(
        "providers",
        help="per provider and model: success rate, latency, TTFT, tokens/s",
        description="Calls, success rate, latency and time-to-first-token percentiles "
        "(p50/p90/p99) and throughput per provider and model.",
    )
    common(providers)
    providers.set_defaults(handler=cmd_usage_providers)

    spend = actions.add_parser(
        "spend",
        help="spend per user, model or day",
        description="Requests, cost and tokens per user (biggest first), model or UTC day.",
    )
    common(spend)
    spend.add_argument("--group", choices=["user", "model", "day"], default="user")
    spend.add_argument("--limit", type=_positive_int, default=100, help="rows shown (100)")
    spend.set_defaults(handler=cmd_usage_spend)
