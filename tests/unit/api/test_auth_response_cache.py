"""The response cache's request parsing and keys: opt-in only, per user, canonical body."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fakeredis import FakeAsyncRedis

from services.api.admission import cached_price_nusd
from services.api.response_cache import CacheRequest, ResponseCache, cache_key, cache_request
from services.api.validation import parse_chat_body
from shared.errors import InvalidRequest

BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


def ask(headers: dict[str, str], raw: bytes = BODY, user: str = "u1") -> CacheRequest | None:
    return cache_request(
        headers, parse_chat_body(raw), raw, user, default_ttl_s=300, max_ttl_s=3600
    )


class TestCacheRequest:
    def test_off_unless_asked(self) -> None:
        assert ask({}) is None
        assert ask({"x-gateway-cache": "false"}) is None
        wanted = ask({"x-gateway-cache": "true"})
        assert wanted is not None and wanted.ttl_s == 300
        assert ask({"x-gateway-cache": "1", "x-gateway-cache-ttl": "60"}) == CacheRequest(
            wanted.digest, 60
        )

    @pytest.mark.parametrize(
        "headers",
        [
            {"x-gateway-cache": "maybe"},
            {"x-gateway-cache": "true", "x-gateway-cache-ttl": "0"},
            {"x-gateway-cache": "true", "x-gateway-cache-ttl": "3601"},
            {"x-gateway-cache": "true", "x-gateway-cache-ttl": "soon"},
        ],
    )
    def test_bad_headers_are_400(self, headers: dict[str, str]) -> None:
        with pytest.raises(InvalidRequest):
            ask(headers)

    def test_streaming_is_never_cached(self) -> None:
        raw = orjson.dumps({**orjson.loads(BODY), "stream": True})
        assert ask({"x-gateway-cache": "true"}, raw) is None


class TestKeys:
    def test_never_shared_between_users(self) -> None:
        assert cache_key("u1", BODY) != cache_key("u2", BODY)

    def test_same_request_in_another_layout_is_the_same_entry(self) -> None:
        reordered = b'{ "messages": [{"content": "hi", "role": "user"}],\n "model": "gpt-4o-mini" }'
        assert cache_key("u1", reordered) == cache_key("u1", BODY)
        other: dict[str, Any] = {**orjson.loads(BODY), "temperature": 0}
        assert cache_key("u1", orjson.dumps(other)) != cache_key("u1", BODY)


async def test_store_and_read_back() -> None:
    redis = FakeAsyncRedis()
    cache = ResponseCache(redis)
    wanted = CacheRequest(cache_key("u1", BODY), 30)
    answer = orjson.dumps({"id": "chatcmpl-1", "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    assert await cache.get(wanted) is None
    assert await cache.put(wanted, answer, {"status": 200, "cost_nusd": 42, "provider": "fake", "model": "m"})
    assert not await cache.put(wanted, answer, {"status": 502})
    hit = await cache.get(wanted)
    assert hit is not None and hit.body == answer and hit.cost_nusd == 42
    assert (hit.usage.prompt_tokens, hit.usage.completion_tokens) == (3, 5)
    assert 0 < await redis.ttl("gw:rcache:" + wanted.digest) <= 30
    assert (cache.hits, cache.misses, cache.stores) == (1, 1, 1)
    await redis.aclose()


def test_cached_price_fraction() -> None:
    from decimal import Decimal

    assert cached_price_nusd(1000, Decimal(0)) == 0
    assert cached_price_nusd(1001, Decimal("0.5")) == 501  # half-up
