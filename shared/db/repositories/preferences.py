"""Per-user routing preferences."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import UserPreference


async def get_routing(session: AsyncSession, user_id: str) -> dict[str, Any] | None:
    row = await session.scalar(
        select(UserPreference.routing).where(UserPreference.user_id == user_id)
    )
    return dict(row) if row else None


async def set_routing(
    session: AsyncSession, user_id: str, routing: dict[str, Any] | None
) -> None:
    """Store (or with None, clear) a user's preferences. Validate them first."""
    row = await session.get(UserPreference, user_id)
    if row is None:
        session.add(UserPreference(user_id=user_id, routing=routing))
    else:
        row.routing = routing
        row.updated_at = datetime.now(UTC)
    await session.flush()
