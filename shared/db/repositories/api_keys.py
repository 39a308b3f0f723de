"""API keys: shown once at creation, stored only as a SHA-256 hash plus a display prefix.

Keys are 48 random URL-safe characters (288 bits), so a plain fast hash is enough: there
is nothing to brute-force, and lookups stay one indexed equality on `key_hash`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import ApiKey

KEY_PREFIX = "gw-"
_DISPLAY_CHARS = 4


def generate_api_key() -> str:
    """A new plaintext key: `gw-` and 48 URL-safe random characters."""
    return KEY_PREFIX + secrets.token_urlsafe(36)


def hash_api_key(key: str) -> str:
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
    name: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for `user_id`; returns the row and the plaintext, which is never stored."""
    plaintext = generate_api_key()
    key = ApiKey(
        id=new_key_id(),
        user_id=user_id,
        key_hash=hash_api_key(plaintext),
        display_prefix=display_prefix(plaintext),
        name=name,
        expires_at=expires_at,
    )
    session.add(key)
    await session.flush()
    return key, plaintext


async def find_active_key(session: AsyncSession, key_hash: str, now: datetime) -> ApiKey | None:
    """The key with this hash if it is neither revoked nor expired at `now`."""
    stmt = select(ApiKey).where(
        ApiKey.key_hash == key_hash,
        ApiKey.revoked_at.is_(None),
        or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
    )
    return await session.scalar(stmt)


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
