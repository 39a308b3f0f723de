"""The admin API: users, API keys and wallets (`Authorization: Bearer $ADMIN_TOKEN`).

    POST /admin/users                               {email?, name?} -> the user (201)
    GET  /admin/users?limit=&offset=                users, oldest first
    GET  /admin/users/{user_id}                     the user and their wallet
    POST /admin/users/{user_id}/keys                {name?, expires_days?, allowed_models?,
                                                     rate_limit_rpm?, monthly_spend_limit?}
                                                    -> the key, shown this once (201)
    GET  /admin/users/{user_id}/keys                the user's keys (never the secrets)
    POST /admin/keys/{key_id}/revoke                revoke now (DELETE /admin/keys/{id} too)
    GET  /admin/users/{user_id}/wallet              balance, held, available, ledger sum
    POST /admin/users/{user_id}/wallet/credit       {amount, idempotency_key, reason?}
    POST /admin/users/{user_id}/wallet/adjustment   {amount (+/-), idempotency_key, reason}
    POST /admin/users/{user_id}/wallet/refund       {amount, idempotency_key, reason, request_id?}

Transactions and usage are in `admin_usage.py`. Money goes in as a decimal USD string
(`"10.50"`) or integer `amount_nusd`; it comes out as both. A movement repeated with
the same idempotency key changes nothing (200, `created: false`); the same key for a
different movement is a 409. Every movement invalidates the user's cached balance in
Redis at once, so admission sees it on the next request.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from aiohttp import web
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from services.api import admin_params as params
from services.api.admin_auth import require_admin
from services.api.admin_views import key_view, money, transaction_view, user_view
from services.api.appkeys import AUTH, REDIS, SESSIONS, SETTINGS
from shared.db.repositories import api_keys, ledger, users
from shared.errors import InvalidRequest, NotFound
from shared.redis.funds import Funds

log = structlog.get_logger("api.admin")

MAX_EXPIRES_DAYS = 3650


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _user_or_404(session: AsyncSession, user_id: str) -> Any:
    user = await users.get_user(session, user_id)
    if user is None:
        raise NotFound(f"No user with id '{user_id}'.", param="user_id", code="user_not_found")
    return user


async def held_nusd(request: web.Request, user_id: str) -> int | None:
    """Held by requests in flight; None when Redis cannot say."""
    try:
        return await Funds(request.app[REDIS]).held_nusd(user_id)
    except RedisError:
        return None


async def wallet_view(request: web.Request, session: AsyncSession, user_id: str) -> dict[str, Any]:
    balance = await ledger.get_balance(session, user_id) or 0
    held = await held_nusd(request, user_id)
    view: dict[str, Any] = {"object": "wallet", "user_id": user_id, "currency": "USD"}
    view.update(money("balance", balance))
    if held is not None:
        view.update(money("held", held))
        view.update(money("available", balance - held))
    return view


# --- users -------------------------------------------------------------------------------


async def create_user(request: web.Request) -> web.Response:
    require_admin(request)
    body = await params.json_object(request)
    email, name = params.optional_str(body, "email", 320), params.optional_str(body, "name")
    async with params.database_errors(), request.app[SESSIONS].begin() as session:
        user = await users.create_user(session, email=email, name=name)
        view = user_view(user)
    log.info("admin_user_created", user_id=view["id"])
    return _json(view, status=201)


async def list_users(request: web.Request) -> web.Response:
    require_admin(request)
    limit = params.page_size(request, 100)
    offset_raw = request.query.get("offset", "0")
    if not offset_raw.isdigit():
        raise InvalidRequest("'offset' must be a non-negative integer.", param="offset")
    async with params.database_errors(), request.app[SESSIONS]() as session:
        rows = await users.list_users(session, limit=limit, offset=int(offset_raw))
        data = [user_view(u) for u in rows]
    return _json({"object": "list", "data": data})


async def get_user(request: web.Request) -> web.Response:
    require_admin(request)
    user_id = request.match_info["user_id"]
    async with params.database_errors(), request.app[SESSIONS]() as session:
        view = user_view(await _user_or_404(session, user_id))
        view["wallet"] = await wallet_view(request, session, user_id)
    return _json(view)


# --- keys --------------------------------------------------------------------------------


def _key_options(body: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"name": params.optional_str(body, "name")}
    days = body.get("expires_days")
    if days is not None:
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_EXPIRES_DAYS:
            raise InvalidRequest(
                f"'expires_days' must be an integer from 1 to {MAX_EXPIRES_DAYS}.",
                param="expires_days",
            )
        options["expires_at"] = datetime.now(UTC) + timedelta(days=days)
    models = body.get("allowed_models")
    if models is not None:
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise InvalidRequest(
                "'allowed_models' must be a list of model ids.", param="allowed_models"
            )
        options["allowed_models"] = models
    rpm = body.get("rate_limit_rpm")
    if rpm is not None:
        if isinstance(rpm, bool) or not isinstance(rpm, int) or rpm < 1:
            raise InvalidRequest(
                "'rate_limit_rpm' must be a positive integer.", param="rate_limit_rpm"
            )
        options["rate_limit_rpm"] = rpm
    if body.get("monthly_spend_limit") is not None:
        options["monthly_spend_limit_nusd"] = params.amount_nusd(
            {"amount": body["monthly_spend_limit"]}
        )
    return options


async def create_key(request: web.Request) -> web.Response:
    from shared.key_secret import load_key_secret

    require_admin(request)
    user_id = request.match_info["user_id"]
    options = _key_options(await params.json_object(request))
    secret = load_key_secret(request.app[SETTINGS]).value
    async with params.database_errors(), request.app[SESSIONS].begin() as session:
        await _user_or_404(session, user_id)
        key, plaintext = await api_keys.create_api_key(session, user_id, secret=secret, **options)
        view = key_view(key, datetime.now(UTC))
    view["key"] = plaintext  # shown this once; only its hash is stored
    log.info("admin_key_created", user_id=user_id, key_id=view["id"])
    return _json(view, status=201)


async def list_keys(request: web.Request) -> web.Response:
    require_admin(request)
    user_id = request.match_info["user_id"]
    async with params.database_errors(), request.app[SESSIONS]() as session:
        await _user_or_404(session, user_id)
        rows = await api_keys.list_api_keys(session, user_id)
        now = datetime.now(UTC)
        data = [key_view(k, now) for k in rows]
    return _json({"object": "list", "data": data})


async def revoke_key(request: web.Request) -> web.Response:
    from services.api.key_events import publish_key_revoked

    require_admin(request)
    key_id = request.match_info["key_id"]
    async with params.database_errors(), request.app[SESSIONS].begin() as session:
        key = await api_keys.revoke_api_key(session, key_id)
        if key is None:
            raise NotFound(f"No API key with id '{key_id}'.", param="key_id", code="key_not_found")
        view = key_view(key, datetime.now(UTC))
    # This process forgets it before answering; the others hear the broadcast.
    request.app[AUTH].forget_key(key_id)
    try:  # every api process forgets the key now, not when its cache entry expires
        await publish_key_revoked(request.app[REDIS], key_id)
    except RedisError as exc:
        log.warning("key_revocation_not_broadcast", key_id=key_id, error=type(exc).__name__)
    log.info("admin_key_revoked", key_id=key_id)
    return _json(view)


# --- wallets -----------------------------------------------------------------------------


async def get_wallet(request: web.Request) -> web.Response:
    require_admin(request)
    user_id = request.match_info["user_id"]
    async with params.database_errors(), request.app[SESSIONS]() as session:
        await _user_or_404(session, user_id)
        view = await wallet_view(request, session, user_id)
        view.update(money("ledger_sum", await ledger.ledger_sum(session, user_id)))
    return _json(view)


async def _movement(request: web.Request, kind: ledger.LedgerKind) -> web.Response:
    require_admin(request)
    user_id = request.match_info["user_id"]
    body = await params.json_object(request)
    amount = params.amount_nusd(body, allow_negative=kind is ledger.LedgerKind.ADJUSTMENT)
    key = params.idempotency_key(request, body)
    reason = params.optional_str(body, "reason", 1000)
    if kind is not ledger.LedgerKind.CREDIT and not reason:
        raise InvalidRequest(f"A {kind.value} needs a 'reason'.", param="reason")
    try:
        async with params.database_errors(), request.app[SESSIONS].begin() as session:
            await _user_or_404(session, user_id)
            if kind is ledger.LedgerKind.CREDIT:
                row, created = await ledger.credit(
                    session, user_id, amount, idempotency_key=key, reason=reason or "admin credit"
                )
            elif kind is ledger.LedgerKind.ADJUSTMENT:
                row, created = await ledger.adjust(
                    session, user_id, amount, idempotency_key=key, reason=reason or ""
                )
            else:
                reference = params.optional_str(body, "request_id", 64)
                row, created = await ledger.refund(
                    session, user_id, amount, idempotency_key=key, reason=reason or "",
                    reference=reference,
                )  # fmt: skip
            view = transaction_view(row)
    except ledger.IdempotencyKeyReused as exc:
        raise InvalidRequest(
            f"The idempotency key '{key}' was already used for a different movement.",
            param="idempotency_key",
            code="idempotency_key_reused",
            status=409,
        ) from exc
    if created:
        try:
            await Funds(request.app[REDIS]).invalidate_balance(user_id)
        except RedisError as exc:  # the cached copy still expires within its TTL
            log.warning("balance_not_invalidated", user_id=user_id, error=type(exc).__name__)
        log.info("admin_wallet_movement", user_id=user_id, kind=kind.value, amount_nusd=amount)
    return _json({"created": created, "transaction": view}, status=201 if created else 200)


async def credit(request: web.Request) -> web.Response:
    return await _movement(request, ledger.LedgerKind.CREDIT)


async def adjustment(request: web.Request) -> web.Response:
    return await _movement(request, ledger.LedgerKind.ADJUSTMENT)


async def refund(request: web.Request) -> web.Response:
    return await _movement(request, ledger.LedgerKind.REFUND)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/admin/users", create_user)
    router.add_get("/admin/users", list_users)
    router.add_get("/admin/users/{user_id}", get_user)
    router.add_post("/admin/users/{user_id}/keys", create_key)
    router.add_get("/admin/users/{user_id}/keys", list_keys)
    router.add_post("/admin/keys/{key_id}/revoke", revoke_key)
    router.add_delete("/admin/keys/{key_id}", revoke_key)
    router.add_get("/admin/users/{user_id}/wallet", get_wallet)
    router.add_post("/admin/users/{user_id}/wallet/credit", credit)
    router.add_post("/admin/users/{user_id}/wallet/adjustment", adjustment)
    router.add_post("/admin/users/{user_id}/wallet/refund", refund)
