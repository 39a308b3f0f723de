"""Who is calling: a gateway API key (`X-API-Key` or `Authorization: Bearer`).

Keys are looked up by their hash only. Lookups are cached in-process for
`CACHE_TTL_SECONDS`, and unknown keys for a short while too, so a flood of bad keys
costs a dictionary lookup, not a database query each.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from aiohttp import web
from cachetools import TTLCache
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.repositories.api_keys import find_active_key, hash_api_key
from shared.errors import ServiceUnavailable, Unauthorized

log = structlog.get_logger("api.auth")

NEGATIVE_TTL_S = 10
MAX_KEY_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    key_id: str | None

    @property
    def rate_subject(self) -> str:
        return f"key:{self.key_id}" if self.key_id else f"user:{self.user_id}"


def credential_from(request: web.Request) -> str:
    key = request.headers.get("X-API-Key", "").strip()
    if key:
        return key
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    raise Unauthorized(
        "Missing API key. Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."
    )


class Authenticator:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        cache_ttl_s: int,
        cache_size: int = 100_000,
    ) -> None:
        self._sessions = sessions
        self._known: TTLCache[str, Principal] = TTLCache(cache_size, ttl=max(cache_ttl_s, 1))
        self._unknown: TTLCache[str, bool] = TTLCache(cache_size, ttl=NEGATIVE_TTL_S)
        self._inflight: dict[str, asyncio.Future[Principal | None]] = {}

    async def authenticate(self, request: web.Request) -> Principal:
        credential = credential_from(request)
        if len(credential) > MAX_KEY_LENGTH:
            raise Unauthorized("Incorrect API key provided.")
        key_hash = hash_api_key(credential)
        principal = self._known.get(key_hash)
        if principal is not None:
            return principal
        if key_hash in self._unknown:
            raise Unauthorized("Incorrect API key provided.")
        principal = await self._lookup_once(key_hash)
        if principal is None:
            self._unknown[key_hash] = True
            raise Unauthorized("Incorrect API key provided.")
        self._known[key_hash] = principal
        return principal

    async def _lookup_once(self, key_hash: str) -> Principal | None:
        # Concurrent requests with the same new key share one database query.
        pending = self._inflight.get(key_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._inflight[key_hash] = future
        try:
            result = await self._lookup(key_hash)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[key_hash]

    async def _lookup(self, key_hash: str) -> Principal | None:
        try:
            async with self._sessions() as session:
                key = await find_active_key(session, key_hash, datetime.now(UTC))
        except Exception as exc:  # the database is down: not the client's fault
            log.error("key_lookup_failed", error=type(exc).__name__)
            raise ServiceUnavailable("Authentication is temporarily unavailable.") from exc
        if key is None:
            return None
        return Principal(user_id=key.user_id, key_id=key.id)

    def forget(self, key_hash: str) -> None:
        self._known.pop(key_hash, None)
