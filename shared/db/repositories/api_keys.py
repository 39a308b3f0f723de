"""API keys: shown once at creation, stored only as a keyed hash plus a display prefix.

The stored hash is HMAC-SHA256 of the whole key under a server secret
(`API_KEY_HASH_SECRET`, see `shared/key_secret.py`). Keys are 48 random URL-safe
characters (288 bits), so there is nothing to brute-force; the secret is there so that
a leaked database dump alone cannot even confirm a key seen elsewhere, and lookups stay
one indexed equality on `key_hash`.

Transition: rows written before keyed hashing hold a plain SHA-256. Lookups ask for
both hashes in one query (`key_hash IN (hmac, sha256)`); a key found by its legacy hash
is rewritten to its keyed hash on that first use, so the legacy form disappears as keys
are used. A legacy key never used again stays SHA-256 until it is revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import ApiKey, UsageRecord

KEY_PREFIX = "gw-"
KEY_BODY_CHARS = 48
_KEY_FORMAT = re.compile(rf"{KEY_PREFIX}[A-Za-z0-9_-]{{{KEY_BODY_CHARS}}}")
_DISPLAY_CHARS = 4


def generate_api_key() -> str:
    """A new plaintext key: `gw-` and 48 URL-safe random characters."""
    return KEY_PREFIX + secrets.token_urlsafe(36)


def is_well_formed(key: str) -> bool:
    """Whether `key` could be a gateway key at all (prefix, length, alphabet).

    Checked before any lookup, so that malformed credentials cost nothing."""
    return _KEY_FORMAT.fullmatch(key) is not None


def hash_api_key(key: str, secret: bytes) -> str:
    """The stored form of a key: HMAC-SHA256 under the server secret, hex."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def legacy_hash_api_key(key: str) -> str:
    """The unkeyed SHA-256 that rows created before keyed hashing hold."""
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    """What listings show to recognise a key, e.g. `gw-abcd…`."""
    return key[: len(KEY_PREFIX) + _DISPLAY_CHARS] + "…"


def new_key_id() -> str:
    return "key_" + secrets.token_hex(12)


async def create_api_key(
    session: AsyncSession,
    user_id: str,
    *,
    secret: bytes,
    name: str | None = None,
    expires_at: datetime | None = None,
    allowed_models: Sequence[str] | None = None,
    rate_limit_rpm: int | None = None,
    monthly_spend_limit_nusd: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for `user_id`; returns the row and the plaintext, which is never stored.

    :param secret: the server's key-hashing secret.
    :param allowed_models: canonical model ids this key may call; None for all.
    :param rate_limit_rpm: requests per minute for this key; None for the default.
    :param monthly_spend_limit_nusd: most this key may spend per calendar month (UTC).
    """
    plaintext = generate_api_key()
    key = ApiKey(
        id=new_key_id(),
        user_id=user_id,
        key_hash=hash_api_key(plaintext, secret),
        display_prefix=display_prefix(plaintext),
        name=name,
        expires_at=expires_at,
        allowed_models=list(allowed_models) if allowed_models is not None else None,
        rate_limit_rpm=rate_limit_rpm,
        monthly_spend_limit_nusd=monthly_spend_limit_nusd,
    )
    session.add(key)
    await session.flush()
    return key, plaintext


async def find_active_key(
    session: AsyncSession, key_hashes: str | Iterable[str], now: datetime
) -> ApiKey | None:
    """The key with one of these hashes if it is neither revoked nor expired at `now`."""
    hashes = [key_hashes] if isinstance(key_hashes, str) else list(key_hashes)
    stmt = select(ApiKey).where(
        ApiKey.key_hash.in_(hashes),
        ApiKey.revoked_at.is_(None),
        or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
    )
    return await session.scalar(stmt)


async def rehash_key(session: AsyncSession, key_id: str, new_hash: str) -> None:
    """Replace a legacy SHA-256 `key_hash` with the keyed hash (first use after upgrade)."""
    await session.execute(update(ApiKey).where(ApiKey.id == key_id).values(key_hash=new_hash))


async def get_api_key(session: AsyncSession, key_id: str) -> ApiKey | None:
    return await session.get(ApiKey, key_id)


async def revoke_api_key(
    session: AsyncSession, key_id: str, *, now: datetime | None = None
) -> ApiKey | None:
    """Revoke a key; returns it, or None if there is no such key. Revoking twice keeps the
    first revocation time."""
    key = await session.get(ApiKey, key_id)
    if key is None:
        return None
    if key.revoked_at is None:
        key.revoked_at = now or datetime.now(UTC)
        await session.flush()
    return key


async def list_api_keys(session: AsyncSession, user_id: str) -> Sequence[ApiKey]:
    """A user's keys, revoked and expired ones included, oldest first."""
    stmt = select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at, ApiKey.id)
    return (await session.scalars(stmt)).all()


async def touch_last_used(session: AsyncSession, key_ids: Iterable[str], when: datetime) -> int:
    """Set `last_used_at` of these keys in one UPDATE; returns the rows changed."""
    ids = sorted(set(key_ids))
    if not ids:
        return 0
    result = await session.execute(
        update(ApiKey).where(ApiKey.id.in_(ids)).values(last_used_at=when)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def key_spend_since(
    session: AsyncSession, user_id: str, key_id: str, since: datetime
) -> int:
    """nUSD settled through one key since `since` (usage rows carry each request's cost).

    Filtering on the owner too lets the (user_id, created_at) index serve the query."""
    stmt = select(func.coalesce(func.sum(UsageRecord.cost_nusd), 0)).where(
        UsageRecord.user_id == user_id,
        UsageRecord.key_id == key_id,
        UsageRecord.created_at >= since,
    )
    return int(await session.scalar(stmt) or 0)
