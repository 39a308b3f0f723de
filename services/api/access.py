"""What the chat route asks of access control besides authentication: the key's model
scope, the opt-in response cache, and rate-limit headers on refused requests."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web

from services.api.admission import CachedAnswer
from services.api.appkeys import ADMISSION, PRINCIPAL_KEY, REQUEST_ID_KEY, RESPONSE_CACHE, SETTINGS
from services.api.auth import Principal
from services.api.response_cache import CACHE_HEADER, CacheRequest, cache_request
from services.api.validation import ChatBody
from shared.catalog import Catalog, Model
from shared.errors import Forbidden, GatewayError
from shared.money import format_usd

log = structlog.get_logger("api.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_RATE_HEADER = "x-ratelimit-limit-requests"


def model_allowed(principal: Principal, catalog: Catalog, model: Model, body: ChatBody) -> None:
    """403 when the API key is scoped to other models (fallback models included)."""
    if principal.allowed_models is None:
        return
    asked = [(model, body.model, "model")]
    for i, name in enumerate(getattr(body, "fallback_models", ()) or ()):
        fallback = catalog.find(name)
        if fallback is not None:
            asked.append((fallback, name, f"models[{i}]"))
    for found, name, param in asked:
        if not principal.may_use(found.id, name, *found.aliases):
            raise Forbidden(
                f"This API key is not allowed to use the model '{name}'.",
                param=param,
                code="model_not_allowed",
            )


async def cached_answer(
    request: web.Request, principal: Principal, body: ChatBody, raw: bytes
) -> tuple[CacheRequest | None, CachedAnswer | None]:
    """The client's cache request (None without `x-gateway-cache: true`) and its hit."""
    settings = request.app[SETTINGS]
    wanted = cache_request(
        request.headers,
        body,
        raw,
        principal.user_id,
        default_ttl_s=settings.response_cache_ttl_s,
        max_ttl_s=settings.response_cache_max_ttl_s,
    )
    if wanted is None:
        return None, None
    return wanted, await request.app[RESPONSE_CACHE].get(wanted)


async def serve_cached(
    request: web.Request, principal: Principal, requested_model: str, answer: CachedAnswer
) -> web.Response:
    """Answer from the cache, after the same admission as any request (limits, funds)."""
    started = time.perf_counter()
    request_id: str = request[REQUEST_ID_KEY]
    rate, price = await request.app[ADMISSION].admit_cached(
        principal, requested_model, answer, request_id
    )
    # The request's canonical line is written by the request middleware; this adds the hit.
    log.info(
        "response_cache_hit",
        model=requested_model,
        cost_nusd=price,
        latency_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return web.Response(
        body=answer.body,
        content_type="application/json",
        headers={
            **rate.headers(),
            "x-request-id": request_id,
            CACHE_HEADER: "hit",
            "x-gateway-cost": format_usd(price),
            "x-gateway-provider": "cache",
        },
    )


async def store_answer(
    request: web.Request,
    wanted: CacheRequest | None,
    response: web.Response,
    meta: Mapping[str, Any],
) -> None:
    """Keep a fresh non-streaming answer for later hits (when the client asked)."""
    if wanted is None or not isinstance(response.body, bytes):
        return
    response.headers[CACHE_HEADER] = "miss"
    await request.app[RESPONSE_CACHE].put(wanted, response.body, meta)


@web.middleware
async def rate_headers_on_refusal(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals after authentication (400, 403, 404, 402...) still say where the caller
    stands against its rate limit; costs a Redis read only on that error path."""
    try:
        return await handler(request)
    except GatewayError as exc:
        principal = request.get(PRINCIPAL_KEY)
        if isinstance(principal, Principal) and _RATE_HEADER not in exc.headers:
            rate = await request.app[ADMISSION].rate_state(principal)
            if rate is not None:
                exc.headers = {**rate.headers(), **exc.headers}
        raise
