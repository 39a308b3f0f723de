"""What users see of their own account, with their API key.

GET /v1/wallet?limit=                balance, held by requests in flight, available,
                                     and the latest ledger rows
GET /v1/usage?from=&to=&group_by=model,day&limit=&cursor=
                                     totals and a summary for the range, plus the
                                     requests themselves, newest first (paged)
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from services.api import admin_params as params
from services.api.admin_views import summary_view, transaction_view, usage_view
from services.api.appkeys import AUTH, SESSIONS
from services.api.routes.admin import wallet_view
from services.api.routes.admin_usage import page
from shared.db.repositories import ledger, usage

USER_DIMENSIONS = ("model", "provider", "day")


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


async def get_wallet(request: web.Request) -> web.Response:
    principal = await request.app[AUTH].authenticate(request)
    limit = params.page_size(request, 20)
    async with params.database_errors(), request.app[SESSIONS]() as session:
        view = await wallet_view(request, session, principal.user_id)
        rows = await ledger.transactions_page(session, user_id=principal.user_id, limit=limit)
        view["transactions"] = [transaction_view(tx) for tx in rows]
    return _json(view)


async def get_usage(request: web.Request) -> web.Response:
    principal = await request.app[AUTH].authenticate(request)
    group_by = params.csv_list(request, "group_by", USER_DIMENSIONS) or ["model"]
    since, until = params.date_range(request)
    limit = params.page_size(request, 20)
    async with params.database_errors(), request.app[SESSIONS]() as session:
        totals = await usage.summarize(
            session, group_by=(), user_id=principal.user_id, since=since, until=until
        )
        summary = await usage.summarize(
            session, group_by=group_by, user_id=principal.user_id, since=since, until=until
        )
        rows = await usage.usage_page(
            session,
            user_id=principal.user_id,
            since=since,
            until=until,
            before_id=params.cursor(request),
            limit=limit,
        )
        requests = [usage_view(r) for r in rows]
    body = page(requests, limit)
    body.update(
        object="usage",
        totals=summary_view(totals[0]),
        group_by=group_by,
        summary=[summary_view(r) for r in summary],
    )
    return _json(body)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/wallet", get_wallet)
    router.add_get("/v1/usage", get_usage)
