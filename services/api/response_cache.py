"""Opt-in exact-match response cache for non-streaming chat completions.

A client asks for it per request with `x-gateway-cache: true` (and optionally
`x-gateway-cache-ttl: <seconds>`, at most `RESPONSE_CACHE_MAX_TTL_SECONDS`). The cache
key is a SHA-256 of the user id and the request body in canonical form (parsed, keys
sorted, no whitespace), so the same request from another user is a different entry:
answers never cross users. A hit is answered from Redis with `x-gateway-cache: hit`,
counts against the rate limit like any request, and is billed through the normal path:
admission puts a completion event (provider `cache`) straight on the events stream,
billing records its usage row and debits `RESPONSE_CACHE_PRICE_FRACTION` (default 0)
of the original cost. Requests without the header never touch the cache; streaming
requests are never cached.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from redis.exceptions import RedisError

from services.api.admission import CachedAnswer
from services.api.validation import ChatBody
from shared.errors import InvalidRequest
from shared.messages import Usage
from shared.redis import keys

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger("api.response_cache")

CACHE_HEADER = "x-gateway-cache"
TTL_HEADER = "x-gateway-cache-ttl"
MAX_ENTRY_BYTES = 4 * 1024 * 1024
_ON = frozenset({"true", "1", "yes", "on"})
_OFF = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True, slots=True)
class CacheRequest:
    digest: str
    ttl_s: int


def cache_key(user_id: str, raw: bytes) -> str:
    """The entry's digest: the user and the canonical request body."""
    canonical = orjson.dumps(orjson.loads(raw), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(user_id.encode() + b"\x00" + canonical).hexdigest()


def cache_request(
    headers: Mapping[str, str],
    body: ChatBody,
    raw: bytes,
    user_id: str,
    *,
    default_ttl_s: int,
    max_ttl_s: int,
) -> CacheRequest | None:
    """What the client asked of the cache; None when it did not opt in (or streams)."""
    value = headers.get(CACHE_HEADER)
    if value is None:
        return None
    wanted = value.strip().lower()
    if wanted in _OFF:
        return None
    if wanted not in _ON:
        raise InvalidRequest(f"'{CACHE_HEADER}' must be 'true' or 'false'.", param=CACHE_HEADER)
    ttl_s = default_ttl_s
    raw_ttl = headers.get(TTL_HEADER)
    if raw_ttl is not None:
        try:
            ttl_s = int(raw_ttl.strip())
        except ValueError:
            ttl_s = 0
        if not 1 <= ttl_s <= max_ttl_s:
            raise InvalidRequest(
                f"'{TTL_HEADER}' must be a whole number of seconds from 1 to {max_ttl_s}.",
                param=TTL_HEADER,
            )
    if body.stream:
        return None
    return CacheRequest(cache_key(user_id, raw), min(ttl_s, max_ttl_s))


class ResponseCache:
    """Stored answers in Redis; counters `hits`, `misses`, `stores` for metrics."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self.hits = 0
        self.misses = 0
        self.stores = 0

    async def get(self, request: CacheRequest) -> CachedAnswer | None:
        try:
            raw = await self._redis.get(keys.response_cache(request.digest))
        except RedisError as exc:  # the cache is an optimisation: serve without it
            log.warning("response_cache_unavailable", error=type(exc).__name__)
            return None
        answer = _decode(raw) if raw is not None else None
        if answer is None:
            self.misses += 1
        else:
            self.hits += 1
        log.debug("response_cache", hit=answer is not None)
        return answer

    async def put(self, request: CacheRequest, body: bytes, meta: Mapping[str, Any]) -> bool:
        """Store a successful answer; False when it is not cacheable."""
        if int(meta.get("status", 200)) != 200 or len(body) > MAX_ENTRY_BYTES:
            return False
        try:
            usage = Usage.from_openai(orjson.loads(body).get("usage")) or Usage()
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return False
        header = {
            "c": int(meta.get("cost_nusd") or 0),
            "p": meta.get("provider"),
            "m": meta.get("model"),
            "u": [usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens],
        }
        try:
            await self._redis.set(
                keys.response_cache(request.digest),
                orjson.dumps(header) + b"\n" + body,
                ex=request.ttl_s,
            )
        except RedisError as exc:
            log.warning("response_cache_unavailable", error=type(exc).__name__)
            return False
        self.stores += 1
        return True


def _decode(raw: bytes) -> CachedAnswer | None:
    head, sep, body = raw.partition(b"\n")
    if not sep:
        return None
    try:
        header = orjson.loads(head)
        prompt, completion, cached, reasoning = (int(n) for n in header["u"])
        return CachedAnswer(
            body=body,
            cost_nusd=int(header["c"]),
            provider=header.get("p"),
            model_served=header.get("m"),
            usage=Usage(prompt, completion, cached, reasoning),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        log.warning("response_cache_entry_undecodable")
        return None
