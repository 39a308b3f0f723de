"""POST /v1/chat/estimate: what a chat completion would cost, before running it.

Takes the same body as `POST /v1/chat/completions`, validated the same way. Answers
the counted prompt tokens, the most completion tokens the request allows, and for each
provider that may serve the model the least it can cost (the prompt alone) and the most
(the prompt and every allowed completion token), with whether the caller's available
balance (balance minus holds of requests in flight) covers the most. Nothing is queued,
held or billed, and it counts against no rate limit.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from services.api import admin_params as params
from services.api.admin_views import money
from services.api.admission import max_cost_nusd
from services.api.appkeys import AUTH, CATALOG, REDIS, SESSIONS, SETTINGS
from services.api.validation import ChatBody, parse_chat_body
from shared.catalog import Model
from shared.db.repositories import ledger
from shared.errors import ModelNotFound, ServiceUnavailable
from shared.redis.funds import Funds
from shared.tokens import count_prompt_tokens, is_exact


def offer_costs(model: Model, body: ChatBody, prompt_tokens: int) -> list[dict[str, Any]]:
    """Min and max cost of the request at each provider that offers the model."""
    rows = []
    for offer in model.offers:
        max_out = min(body.max_output_tokens or offer.max_output_tokens, offer.max_output_tokens)
        max_out *= body.n
        rows.append(
            {
                "provider": offer.provider,
                "model": offer.upstream_model,
                "max_completion_tokens": max_out,
                **money("min_cost", offer.price.cost_nusd(prompt_tokens, 0)),
                **money("max_cost", offer.price.cost_nusd(prompt_tokens, max_out)),
            }
        )
    return rows


async def estimate(request: web.Request) -> web.Response:
    app = request.app
    principal = await app[AUTH].authenticate(request)
    raw = await request.read()
    body = parse_chat_body(raw)
    model = app[CATALOG].find(body.model)
    if model is None:
        raise ModelNotFound(
            f"The model '{body.model}' does not exist. GET /v1/models lists the models.",
            param="model",
        )
    tools = orjson.loads(raw).get("tools")
    # Off the event loop: a long prompt takes a while, and the first call loads the BPE.
    prompt_tokens = await asyncio.to_thread(
        count_prompt_tokens, body.messages, model.id, tools=tools
    )
    providers = offer_costs(model, body, prompt_tokens)
    async with params.database_errors(), app[SESSIONS]() as session:
        balance = await ledger.get_balance(session, principal.user_id) or 0
    try:
        held = await Funds(app[REDIS]).held_nusd(principal.user_id)
    except RedisError as exc:
        raise ServiceUnavailable("The gateway's cache is unavailable; retry shortly.") from exc
    available = balance - held
    most = max(p["max_cost_nusd"] for p in providers)
    least = min(p["min_cost_nusd"] for p in providers)
    minimal_fund = app[SETTINGS].minimal_fund_nusd
    hold = max_cost_nusd(model, body)
    result = {
        "object": "chat.estimate",
        "model": model.id,
        "prompt_tokens": prompt_tokens,
        # Exact for OpenAI-family models (tiktoken); an approximation for the others.
        "prompt_tokens_exact": is_exact(model.id),
        "max_completion_tokens": max(p["max_completion_tokens"] for p in providers),
        **money("min_cost", least),
        **money("max_cost", most),
        "providers": providers,
        "wallet": {
            **money("balance", balance),
            **money("held", held),
            **money("available", available),
            **money("minimal_fund", minimal_fund),
        },
        "covers_max_cost": available >= most,
        # What admission would reserve now, and whether it would let the request in.
        **money("hold", hold),
        "would_admit": available >= hold and available >= minimal_fund,
    }
    return web.Response(body=orjson.dumps(result), content_type="application/json")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/v1/chat/estimate", estimate)
