"""Who is calling: a gateway API key or a Supabase session token (JWT).

Credentials come in `X-API-Key` or `Authorization: Bearer`. A bearer value shaped like a
JWT goes to `JwtVerifier` (`jwt_auth.py`) and its `sub` maps to a gateway user (created
with an empty wallet on first sight); anything else is an API key.

API keys, cheapest rejection first, so bad keys cost next to nothing:

1. format (prefix `gw-`, 48 URL-safe characters): malformed ones are refused for free;
2. the in-process cache of known keys (`CACHE_TTL_SECONDS`) and of unknown ones (10 s);
3. a database lookup, shared by concurrent requests for the same key, and rationed:
   at most `AUTH_UNKNOWN_KEY_LOOKUPS_PER_SECOND` (burst twice that) per process. A flood
   of random well-formed keys therefore costs the database a fixed, small rate per api
   process whatever the attacker sends; past the ration the answer is a 429 with
   `Retry-After: 1` (never a 401 that might be wrong for a real, not yet cached key;
   the OpenAI SDKs retry 429 on their own). Keys already cached are never rationed,
   so good traffic is unaffected.

Revocation is broadcast (`key_events.py`): every api process drops the key from its
cache within a moment, not after the TTL. `last_used_at` is remembered in memory and
written in one UPDATE per minute for all keys used meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import structlog
from aiohttp import web
from cachetools import TTLCache
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.jwt_auth import JwtVerifier, looks_like_jwt
from shared.db.models import ApiKey
from shared.db.repositories.api_keys import (
    find_active_key,
    hash_api_key,
    is_well_formed,
    legacy_hash_api_key,
    rehash_key,
    touch_last_used,
)
from shared.db.repositories.users import get_or_create_by_external_id
from shared.errors import RateLimited, ServiceUnavailable, Unauthorized

log = structlog.get_logger("api.auth")

NEGATIVE_TTL_S = 10
MAX_CREDENTIAL_LENGTH = 8192
LAST_USED_FLUSH_S = 60.0
_BAD_KEY = "Incorrect API key provided."

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, with the limits of the key it used (None: no restriction)."""

    user_id: str
    key_id: str | None
    allowed_models: frozenset[str] | None = None
    rate_limit_rpm: int | None = None
    monthly_spend_limit_nusd: int | None = None
    expires_at: datetime | None = field(default=None, compare=False)

    @property
    def rate_subject(self) -> str:
        return f"key:{self.key_id}" if self.key_id else f"user:{self.user_id}"

    def may_use(self, *model_names: str) -> bool:
        """Whether the key may call a model known by any of these names (id or alias)."""
        return self.allowed_models is None or any(n in self.allowed_models for n in model_names)


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


class LookupRation:
    """A token bucket: how many lookups of never-seen keys may reach the database."""

    def __init__(self, per_s: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self._per_s = per_s
        self._burst = burst
        self._tokens = burst
        self._clock = clock
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._per_s)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were stored as UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _principal(key: ApiKey) -> Principal:
    return Principal(
        user_id=key.user_id,
        key_id=key.id,
        allowed_models=frozenset(key.allowed_models) if key.allowed_models is not None else None,
        rate_limit_rpm=key.rate_limit_rpm,
        monthly_spend_limit_nusd=key.monthly_spend_limit_nusd,
        expires_at=_aware(key.expires_at),
    )


class Authenticator:
    """Turns a request's credential into a `Principal`; one per api process.

    Counters for metrics: `cache_hits` / `cache_misses` by cache name (`key`,
    `key_negative`, `user`, `jwks`), `db_lookups` (key lookups that reached the
    database), `lookups_rationed` (refused with 429 past the ration), `malformed`.

    :param key_secret: the server secret keys are hashed under.
    :param jwt: the session-token verifier; None to accept API keys only.
    :param unknown_lookups_per_s: the ration of database lookups for never-seen keys.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        cache_ttl_s: int,
        key_secret: bytes,
        jwt: JwtVerifier | None = None,
        unknown_lookups_per_s: float = 50,
        cache_size: int = 100_000,
    ) -> None:
        self._sessions = sessions
        self._secret = key_secret
        self._jwt = jwt
        ttl_s = max(cache_ttl_s, 1)
        self._known: TTLCache[str, Principal] = TTLCache(cache_size, ttl=ttl_s)
        self._unknown: TTLCache[str, bool] = TTLCache(cache_size, ttl=NEGATIVE_TTL_S)
        self._users: TTLCache[str, Principal] = TTLCache(cache_size, ttl=ttl_s)
        self._inflight: dict[str, asyncio.Future[object]] = {}
        per_s = max(unknown_lookups_per_s, 1.0)
        self._ration = LookupRation(per_s, 2 * per_s)
        self._used: set[str] = set()
        # Bumped by every eviction: a lookup that began before one must not be cached.
        self._evictions = 0
        self._hits = {"key": 0, "key_negative": 0, "user": 0}
        self._misses = {"key": 0, "key_negative": 0, "user": 0}
        self.db_lookups = 0
        self.lookups_rationed = 0
        self.malformed = 0

    @property
    def cache_hits(self) -> dict[str, int]:
        return {**self._hits, "jwks": self._jwt.cache_hits if self._jwt else 0}

    @property
    def cache_misses(self) -> dict[str, int]:
        return {**self._misses, "jwks": self._jwt.cache_misses if self._jwt else 0}

    async def authenticate(self, request: web.Request) -> Principal:
        credential = credential_from(request)
        if looks_like_jwt(credential) and len(credential) <= MAX_CREDENTIAL_LENGTH:
            return await self._from_jwt(credential)
        return await self._from_key(credential)

    # --- API keys ----------------------------------------------------------------------

    async def _from_key(self, credential: str) -> Principal:
        if not is_well_formed(credential):
            self.malformed += 1
            raise Unauthorized(_BAD_KEY)
        key_hash = hash_api_key(credential, self._secret)
        principal = self._known.get(key_hash)
        if principal is not None:
            if principal.expires_at is not None and principal.expires_at <= datetime.now(UTC):
                self._known.pop(key_hash, None)
                raise Unauthorized(_BAD_KEY)
            self._count("key", hit=True)
            self._used.add(principal.key_id or "")
            return principal
        if key_hash in self._unknown:
            self._count("key_negative", hit=True)
            raise Unauthorized(_BAD_KEY)
        self._count("key", hit=False)
        if key_hash not in self._inflight and not self._ration.take():
            self.lookups_rationed += 1
            raise RateLimited(
                "Too many unrecognised API keys are being tried; retry in a second.",
                code="auth_lookups_rate_limited",
                headers={"retry-after": "1"},
            )
        evictions = self._evictions
        found = await self._once(key_hash, lambda: self._lookup_key(credential, key_hash))
        if not isinstance(found, Principal):
            self._unknown[key_hash] = True
            raise Unauthorized(_BAD_KEY)
        if evictions == self._evictions:
            self._known[key_hash] = found
        self._used.add(found.key_id or "")
        return found

    async def _lookup_key(self, credential: str, key_hash: str) -> Principal | None:
        legacy = legacy_hash_api_key(credential)
        self.db_lookups += 1
        try:
            async with self._sessions.begin() as session:
                key = await find_active_key(session, (key_hash, legacy), datetime.now(UTC))
                if key is not None and key.key_hash == legacy:
                    # Created before keyed hashing: store the keyed hash from now on.
                    await rehash_key(session, key.id, key_hash)
                    log.info("api_key_rehashed", key_id=key.id)
        except Exception as exc:  # the database is down: not the client's fault
            log.error("key_lookup_failed", error=type(exc).__name__)
            raise ServiceUnavailable("Authentication is temporarily unavailable.") from exc
        return _principal(key) if key is not None else None

    def forget_key(self, key_id: str) -> int:
        """Drop a key (revoked or changed) from this process's cache; returns entries dropped."""
        self._evictions += 1
        stale = [h for h, p in list(self._known.items()) if p.key_id == key_id]
        for key_hash in stale:
            self._known.pop(key_hash, None)
        if stale:
            log.info("api_key_evicted", key_id=key_id)
        return len(stale)

    def forget_all_keys(self) -> None:
        """Drop every cached key: revocations may have been missed (broadcast lost)."""
        self._evictions += 1
        self._known.clear()

    # --- Supabase JWTs -----------------------------------------------------------------

    async def _from_jwt(self, token: str) -> Principal:
        if self._jwt is None:
            raise Unauthorized("Session tokens are not accepted by this gateway; use an API key.")
        identity = await self._jwt.verify(token)
        principal = self._users.get(identity.subject)
        if principal is not None:
            self._count("user", hit=True)
            return principal
        self._count("user", hit=False)
        found = await self._once(
            "sub:" + identity.subject, lambda: self._user_for(identity.subject, identity.email)
        )
        assert isinstance(found, Principal)
        self._users[identity.subject] = found
        return found

    async def _user_for(self, subject: str, email: str | None) -> Principal:
        try:
            async with self._sessions.begin() as session:
                user = await get_or_create_by_external_id(session, subject, email)
        except Exception as exc:
            log.error("user_lookup_failed", error=type(exc).__name__)
            raise ServiceUnavailable("Authentication is temporarily unavailable.") from exc
        return Principal(user_id=user.id, key_id=None)

    # --- shared ------------------------------------------------------------------------

    async def _once(self, name: str, lookup: Callable[[], Awaitable[T]]) -> object:
        """Concurrent requests needing the same lookup share one database query."""
        pending = self._inflight.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._inflight[name] = future
        try:
            result = await lookup()
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[name]

    def _count(self, cache: str, *, hit: bool) -> None:
        (self._hits if hit else self._misses)[cache] += 1
        log.debug("auth_cache", cache=cache, hit=hit)

    async def flush_last_used(self) -> int:
        """Write `last_used_at` = now for every key used since the last flush, in one UPDATE."""
        used, self._used = self._used - {""}, set()
        if not used:
            return 0
        try:
            async with self._sessions.begin() as session:
                return await touch_last_used(session, used, datetime.now(UTC))
        except Exception as exc:  # noqa: BLE001 - retried at the next flush
            self._used |= used
            log.warning("last_used_flush_failed", error=type(exc).__name__, keys=len(used))
            return 0

    async def run_last_used_flusher(self, interval_s: float = LAST_USED_FLUSH_S) -> None:
        """Flush `last_used_at` every `interval_s` until cancelled (then once more)."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                await self.flush_last_used()
        finally:
            await asyncio.shield(self.flush_last_used())

    async def close(self) -> None:
        if self._jwt is not None:
            await self._jwt.close()
