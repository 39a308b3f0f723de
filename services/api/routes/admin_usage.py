"""Admin queries over the ledger and usage (`Authorization: Bearer $ADMIN_TOKEN`).

    GET /admin/transactions?user_id=&kind=credit,debit&from=&to=&limit=&cursor=
        ledger rows, newest first; `next_cursor` fetches the next page
    GET /admin/usage/summary?group_by=user,model,provider,day&user_id=&from=&to=
        requests, tokens and cost per group (JSON)
    GET /admin/usage/export.csv?user_id=&from=&to=
        every usage row in the range as CSV, streamed page by page

`from`/`to` are ISO 8601 dates or date-times, UTC unless an offset is given; a bare
date as `to` includes that day.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
from aiohttp import web

from services.api import admin_params as params
from services.api.admin_auth import require_admin
from services.api.admin_views import (
    USAGE_CSV_COLUMNS,
    summary_view,
    transaction_view,
    usage_view,
)
from services.api.appkeys import SESSIONS
from shared.db.repositories import ledger, usage

KINDS = tuple(kind.value for kind in ledger.LedgerKind)
CSV_PAGE = 1000


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


def page(rows: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """A list response with the cursor of the next page (None on the last one)."""
    more = len(rows) == limit
    return {"object": "list", "data": rows, "next_cursor": str(rows[-1]["id"]) if more else None}


async def transactions(request: web.Request) -> web.Response:
    require_admin(request)
    kinds = params.csv_list(request, "kind", KINDS)
    since, until = params.date_range(request)
    limit = params.page_size(request)
    async with params.database_errors(), request.app[SESSIONS]() as session:
        rows = await ledger.transactions_page(
            session,
            user_id=request.query.get("user_id") or None,
            kinds=kinds,
            since=since,
            until=until,
            before_id=params.cursor(request),
            limit=limit,
        )
        data = [transaction_view(tx) for tx in rows]
    return _json(page(data, limit))


async def usage_summary(request: web.Request) -> web.Response:
    require_admin(request)
    group_by = params.csv_list(request, "group_by", usage.SUMMARY_DIMENSIONS) or ["model"]
    since, until = params.date_range(request)
    async with params.database_errors(), request.app[SESSIONS]() as session:
        rows = await usage.summarize(
            session,
            group_by=group_by,
            user_id=request.query.get("user_id") or None,
            since=since,
            until=until,
        )
    return _json({"object": "list", "group_by": group_by, "data": [summary_view(r) for r in rows]})


def _csv_line(values: list[Any]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(values)
    return out.getvalue().encode()


async def usage_csv(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    since, until = params.date_range(request)
    user_id = request.query.get("user_id") or None
    async with params.database_errors(), request.app[SESSIONS]() as session:
        # The first page before any byte is sent, so a failure can still be a clean error.
        rows = await usage.usage_page(
            session, user_id=user_id, since=since, until=until, limit=CSV_PAGE
        )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": 'attachment; filename="usage.csv"',
            }
        )
        await response.prepare(request)
        await response.write(_csv_line(list(USAGE_CSV_COLUMNS)))
        while rows:
            chunk = b"".join(
                _csv_line([usage_view(r).get(c) for c in USAGE_CSV_COLUMNS]) for r in rows
            )
            await response.write(chunk)
            if len(rows) < CSV_PAGE:
                break
            rows = await usage.usage_page(
                session, user_id=user_id, since=since, until=until, before_id=rows[-1].id,
                limit=CSV_PAGE,
            )  # fmt: skip
    await response.write_eof()
    return response


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/admin/transactions", transactions)
    router.add_get("/admin/usage/summary", usage_summary)
    router.add_get("/admin/usage/export.csv", usage_csv)
