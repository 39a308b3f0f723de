"""How users, keys, ledger rows and usage rows look in JSON (admin and account API).

Money is given twice: a USD decimal string (exact, 9 places) and integer nano-dollars.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.db.models import ApiKey, LedgerTransaction, UsageRecord, User
from shared.money import format_usd


def money(name: str, amount_nusd: int) -> dict[str, Any]:
    return {name: format_usd(amount_nusd), f"{name}_nusd": amount_nusd}


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "object": "user",
        "email": user.email,
        "name": user.name,
        "external_id": user.external_id,
        "created_at": iso(user.created_at),
    }


def key_status(key: ApiKey, now: datetime) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None:
        expires = key.expires_at if key.expires_at.tzinfo else key.expires_at.replace(tzinfo=UTC)
        if expires <= now:
            return "expired"
    return "active"


def key_view(key: ApiKey, now: datetime) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": key.id,
        "object": "api_key",
        "user_id": key.user_id,
        "name": key.name,
        "prefix": key.display_prefix,
        "status": key_status(key, now),
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "revoked_at": iso(key.revoked_at),
        "last_used_at": iso(key.last_used_at),
    }
    # Scopes, where the schema has them.
    for name in ("allowed_models", "rate_limit_rpm"):
        if hasattr(key, name):
            view[name] = getattr(key, name)
    limit = getattr(key, "monthly_spend_limit_nusd", None)
    view.update(money("monthly_spend_limit", limit) if limit is not None else {})
    return view


def transaction_view(tx: LedgerTransaction) -> dict[str, Any]:
    return {
        "id": tx.id,
        "object": "transaction",
        "user_id": tx.user_id,
        "kind": tx.kind,
        **money("amount", tx.amount_nusd),
        **money("balance_after", tx.balance_after_nusd),
        "idempotency_key": tx.idempotency_key,
        "request_id": tx.request_id,
        "reason": tx.reason,
        "created_at": iso(tx.created_at),
    }


def usage_view(row: UsageRecord) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "usage_record",
        "request_id": row.request_id,
        "user_id": row.user_id,
        "key_id": row.key_id,
        "model": row.model_requested,
        "model_served": row.model_served,
        "provider": row.provider,
        "status": row.status,
        "http_status": row.http_status,
        "stream": row.stream,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "cached_tokens": row.cached_tokens,
        "reasoning_tokens": row.reasoning_tokens,
        "usage_estimated": row.usage_estimated,
        **money("cost", row.cost_nusd),
        "client_cancelled": row.client_cancelled,
        "duration_ms": row.duration_ms,
        "created_at": iso(row.created_at),
    }


def summary_view(row: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in row.items() if k != "cost_nusd"}
    view.update(money("cost", int(row["cost_nusd"])))
    return view


USAGE_CSV_COLUMNS = (
    "created_at", "request_id", "user_id", "key_id", "model", "model_served", "provider",
    "status", "http_status", "stream", "prompt_tokens", "completion_tokens", "cached_tokens",
    "reasoning_tokens", "usage_estimated", "cost", "cost_nusd", "client_cancelled",
    "duration_ms",
)  # fmt: skip
