"""Users' stored routing preferences, cached in process for `CACHE_TTL_SECONDS`.

The api attaches them to each job; the worker merges the request's own `provider`
object over them field by field. A change made through this process's admin API is
visible at once here, and in other api processes within the cache TTL.
"""

from __future__ import annotations

from typing import Any

import structlog
from cachetools import TTLCache
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.repositories.preferences import get_routing

log = structlog.get_logger("api.preferences")

_NONE: dict[str, Any] = {}


class Preferences:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, ttl_s: int, size: int = 100_000
    ) -> None:
        self._sessions = sessions
        self._cache: TTLCache[str, dict[str, Any]] = TTLCache(size, ttl=max(ttl_s, 1))

    async def routing_for(self, user_id: str) -> dict[str, Any] | None:
        cached = self._cache.get(user_id)
        if cached is not None:
            return cached or None
        try:
            async with self._sessions() as session:
                routing = await get_routing(session, user_id)
        except Exception as exc:  # noqa: BLE001 - preferences are an optimisation, not a gate
            log.warning("preferences_unavailable", error=type(exc).__name__)
            return None
        self._cache[user_id] = routing or _NONE
        return routing

    def forget(self, user_id: str) -> None:
        self._cache.pop(user_id, None)
