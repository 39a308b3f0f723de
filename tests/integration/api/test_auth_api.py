"""Access control through the real api app: JWTs via the OpenAI SDK, scoped keys,
rate-limit headers on refusals, spend caps, CORS, and a flood of bad keys."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import aiohttp
import jwt
import openai
import orjson
import pytest
from sqlalchemy import select

from shared.db.models import UsageRecord, User, Wallet
from shared.redis import keys
from tests.fakes.jwks import claims
from tests.integration.api.conftest import JWT_SECRET, Api, ApiFactory, Identity

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def sdk(api: Api, credential: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=credential, base_url=api.url + "/v1", max_retries=0)


async def post(api: Api, headers: dict[str, str], body: Any = CHAT) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(api.url + "/v1/chat/completions", json=body, headers=headers) as r,
    ):
        return r.status, await r.json(), r.headers


def assert_openai_error(body: Any, code: str) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code


class TestSupabaseTokens:
    @pytest.mark.parametrize("kind", ["es", "rs", "hs"])
    async def test_first_use_creates_the_user_with_an_empty_wallet(
        self, api: Api, identity: Identity, kind: str
    ) -> None:
        sub = f"sub-{kind}-{secrets.token_hex(4)}"
        token_claims = claims(identity.issuer, sub, email=f"{sub}@example.com")
        token = {
            "es": lambda: identity.es.mint(token_claims),
            "rs": lambda: identity.rs.mint(token_claims),
            "hs": lambda: jwt.encode(token_claims, JWT_SECRET, algorithm="HS256"),
        }[kind]()
        client = sdk(api, token)
        for _ in range(2):  # the second use finds the same user (cached)
            with pytest.raises(openai.APIStatusError) as caught:
                await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
            assert caught.value.status_code == 402
            assert caught.value.body["code"] == "insufficient_quota"  # type: ignore[index]
            assert caught.value.response.headers["x-ratelimit-limit-requests"] == "1000"
        async with api.sessions() as s:
            user = await s.scalar(select(User).where(User.external_id == sub))
            assert user is not None and user.email == f"{sub}@example.com"
            wallet = await s.get(Wallet, user.id)
            assert wallet is not None and wallet.balance_nusd == 0
        assert api.auth.cache_hits["user"] == 1 and api.auth.cache_misses["user"] == 1
        assert identity.state.apikeys[: identity.state.fetches] == ["anon-key"] * identity.state.fetches
        await client.close()

    async def test_bad_tokens_get_401_in_openai_format(self, api: Api, identity: Identity) -> None:
        import base64
        import hashlib
        import hmac

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        good = claims(identity.issuer)
        header = b64(orjson.dumps({"alg": "HS256", "typ": "JWT", "kid": "es-1"}))
        payload = b64(orjson.dumps(good))
        confused_mac = hmac.new(identity.es.public_pem(), f"{header}.{payload}".encode(), hashlib.sha256)
        none_header = b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
        bad = {
            "expired": identity.es.mint(claims(identity.issuer, exp_in_s=-300)),
            "wrong audience": identity.es.mint(claims(identity.issuer, aud="anon")),
            "wrong issuer": identity.rs.mint(claims("https://elsewhere.example/auth/v1")),
            "wrong signature": jwt.encode(good, "another-secret-of-thirty-two-chars!", algorithm="HS256"),
            "alg none": f"{none_header}.{payload}.",
            "HS256 with the public key": f"{header}.{payload}.{b64(confused_mac.digest())}",
        }
        users_before = await self._users(api)
        for what, token in bad.items():
            client = sdk(api, token)
            with pytest.raises(openai.AuthenticationError) as caught:
                await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
            body = caught.value.body
            assert isinstance(body, dict) and body["code"] == "invalid_api_key", what
            assert body["type"] == "invalid_request_error"
            await client.close()
        assert await self._users(api) == users_before
        assert await api.redis.xlen(keys.JOBS_STREAM) == 0

    @staticmethod
    async def _users(api: Api) -> int:
        async with api.sessions() as s:
            return len((await s.scalars(select(User.id))).all())


class TestScopedKeys:
    async def test_disallowed_model_is_403_with_rate_headers(self, api: Api) -> None:
        user = await api.user()
        key, _ = await api.key(user, allowed_models=["gpt-4o-mini"], rate_limit_rpm=5)
        status, body, headers = await post(api, {"Authorization": f"Bearer {key}"}, {**CHAT, "model": "gpt-4o"})
        assert status == 403
        assert_openai_error(body, "model_not_allowed")
        assert body["error"]["param"] == "model"
        assert headers["x-ratelimit-limit-requests"] == "5"
        assert headers["x-ratelimit-remaining-requests"] == "5"  # a refusal takes nothing
        # The allowed model passes the scope check (and stops at the empty wallet).
        status, body, headers = await post(api, {"X-API-Key": key})
        assert status == 402
        assert headers["x-ratelimit-remaining-requests"] == "5"

    async def test_per_key_rpm_then_429_with_retry_after(self, api: Api) -> None:
        user = await api.user(credit_usd=5)
        key, _ = await api.key(user, rate_limit_rpm=3)
        other, _ = await api.key(user)
        # Accepted requests are queued (no worker runs here); the client stops waiting.
        for _ in range(3):
            assert (await self._try(api, key))[0] == 0
        status, body, headers = await self._try(api, key)
        assert status == 429
        assert_openai_error(body, "rate_limit_exceeded")
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert 1 <= int(headers["retry-after"]) <= 20 and int(headers["retry-after-ms"]) > 0
        # Another key of the same user has its own allowance.
        status, _body, headers = await post(api, {"Authorization": f"Bearer {other}"}, {"model": 1})
        assert status == 400 and headers["x-ratelimit-remaining-requests"] == "1000"
        assert await api.redis.xlen(keys.JOBS_STREAM) == 3

    async def test_bad_body_after_auth_carries_rate_headers(self, api: Api) -> None:
        user = await api.user()
        key, _ = await api.key(user)
        status, body, headers = await post(api, {"Authorization": f"Bearer {key}"}, {"model": 3})
        assert status == 400 and body["error"]["param"] == "model"
        assert headers["x-ratelimit-limit-requests"] == "1000"

    async def test_monthly_spend_limit_counts_this_months_usage(self, api: Api) -> None:
        user = await api.user(credit_usd=50)
        key, key_id = await api.key(user, monthly_spend_limit_nusd=2 * 10**9)
        async with api.sessions.begin() as s:
            s.add(UsageRecord(
                request_id=secrets.token_hex(8), user_id=user, key_id=key_id,
                model_requested="gpt-4o-mini", status="ok", http_status=200, stream=False,
                attempts=1, prompt_tokens=1, completion_tokens=1, cached_tokens=0,
                reasoning_tokens=0, usage_estimated=False, cost_nusd=2 * 10**9 - 10,
                queue_wait_ms=0, duration_ms=1, client_cancelled=False,
            ))  # fmt: skip
        status, body, _headers = await self._try(api, key)
        assert status == 403
        assert_openai_error(body, "key_spend_limit_reached")
        assert body["error"]["type"] == "insufficient_quota"
        spent = await api.redis.get(keys.key_spend(key_id, time.strftime("%Y%m", time.gmtime())))
        assert int(spent) == 2 * 10**9 - 10  # filled from the usage rows

    @staticmethod
    async def _try(api: Api, key: str) -> tuple[int, Any, Any]:
        timeout = aiohttp.ClientTimeout(total=0.5)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            try:
                async with http.post(
                    api.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
                ) as r:
                    return r.status, await r.json(), r.headers
            except TimeoutError:
                return 0, None, {}  # queued: no answer without a worker


class TestBadKeyFlood:
    async def test_ten_thousand_random_keys_never_reach_the_queue_or_the_database(
        self, api: Api, statements: list[str]
    ) -> None:
        good_user = await api.user()
        good, _ = await api.key(good_user)
        assert (await post(api, {"Authorization": f"Bearer {good}"}))[0] == 402  # cached now
        jobs_before = await api.redis.xlen(keys.JOBS_STREAM)
        statements.clear()
        lookups_before = api.auth.db_lookups

        def bad_key(i: int) -> str:
            if i % 2:
                return "gw-" + secrets.token_urlsafe(36)  # well-formed, unknown
            return secrets.token_urlsafe(24)  # malformed

        statuses: dict[int, int] = {}
        good_statuses: list[int] = []
        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def one(i: int) -> None:
                async with http.post(
                    api.url + "/v1/chat/completions", data=b"{}",
                    headers={"Authorization": f"Bearer {bad_key(i)}"},
                ) as r:  # fmt: skip
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1

            async def good_traffic() -> None:
                for _ in range(20):
                    async with http.post(
                        api.url + "/v1/chat/completions", json=CHAT,
                        headers={"Authorization": f"Bearer {good}"},
                    ) as r:  # fmt: skip
                        good_statuses.append(r.status)

            sem = asyncio.Semaphore(64)

            async def limited(i: int) -> None:
                async with sem:
                    await one(i)

            await asyncio.gather(good_traffic(), *(limited(i) for i in range(10_000)))
        elapsed_s = time.monotonic() - started

        assert sum(statuses.values()) == 10_000
        assert set(statuses) <= {401, 429}
        assert statuses[401] >= 5_000  # every malformed one, at least
        assert good_statuses == [402] * 20  # the good key got through auth every time
        lookups = api.auth.db_lookups - lookups_before
        # The ration: a burst of 100, then 50 a second.
        assert lookups <= 100 + 50 * elapsed_s + 1
        key_queries = [s for s in statements if "api_keys" in s]
        assert len(key_queries) == lookups
        assert await api.redis.xlen(keys.JOBS_STREAM) == jobs_before
        print(f"\n10k bad keys in {elapsed_s:.2f} s: {statuses}, {lookups} key lookups reached the db")


class TestCors:
    async def test_off_by_default(self, api: Api) -> None:
        async with aiohttp.ClientSession() as http, http.options(
            api.url + "/v1/chat/completions",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        ) as r:
            assert "Access-Control-Allow-Origin" not in r.headers

    async def test_configured_origins(self, make_api: ApiFactory) -> None:
        api: Api = await make_api(cors_allow_origins=("https://app.example",))
        async with aiohttp.ClientSession() as http:
            preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
            async with http.options(
                api.url + "/v1/chat/completions", headers={"Origin": "https://app.example", **preflight}
            ) as r:
                assert r.status == 204
                assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
                assert "POST" in r.headers["Access-Control-Allow-Methods"]
                assert "authorization" in r.headers["Access-Control-Allow-Headers"]
            async with http.options(
                api.url + "/v1/chat/completions", headers={"Origin": "https://evil.example", **preflight}
            ) as r:
                assert "Access-Control-Allow-Origin" not in r.headers
            async with http.post(
                api.url + "/v1/chat/completions", json=CHAT,
                headers={"Origin": "https://app.example", "Authorization": "Bearer nope"},
            ) as r:  # fmt: skip
                assert r.status == 401
                assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
                assert "x-request-id" in r.headers["Access-Control-Expose-Headers"]
