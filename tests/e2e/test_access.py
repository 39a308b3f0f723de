"""Access control with real processes: Supabase tokens through the OpenAI SDK, a key
revoked on one process refused on another at once, one rate limit shared by three api
processes, the response cache, and a flood of bad keys."""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import jwt
import openai
import orjson
import pytest
import redis as sync_redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.runner import free_port
from shared.db.engine import create_engine, create_sessionmaker
from shared.db.repositories import api_keys, ledger, users
from shared.money import usd_to_nusd
from shared.redis import keys
from shared.settings import normalise_database_url
from tests.e2e.conftest import E2E_REDIS_URL, Stack, _healthy, running_stack
from tests.fakes.jwks import JwksState, JwksThread, SigningKey, claims

T = TypeVar("T")
JWT_SECRET = "e2e-legacy-supabase-secret-32-chars!"
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}]}


class AccessStack:
    def __init__(self, stack: Stack, jwks: JwksThread, es: SigningKey, rs: SigningKey) -> None:
        self.stack = stack
        self.jwks = jwks
        self.es = es
        self.rs = rs
        self.api_urls = [stack.api_url]

    def start_api(self, name: str) -> str:
        port = free_port()
        env = {**self.stack.env, "PORT": str(port)}
        log = open(self.stack.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.stack.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", "api"], env=env, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{port}"
        self.stack.wait_until(lambda: _healthy(url), 30, f"{name} to report healthy")
        self.api_urls.append(url)
        return url

    def client(self, credential: str, api: int = 0) -> openai.OpenAI:
        return openai.OpenAI(
            api_key=credential, base_url=self.api_urls[api] + "/v1", max_retries=0, timeout=30
        )

    def cli_key(self, user_id: str, *flags: str) -> tuple[str, str]:
        out = self.stack.cli("keys", "create", "--user", user_id, *flags)
        key = re.search(r"gw-[A-Za-z0-9_\-]{48}", out)
        assert key, out
        row = self.stack.query(
            "SELECT id FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id LIMIT 1", user_id
        )
        return key[0], row[0]["id"]

    # Users, keys and credits written straight through the repositories: the CLI costs a
    # Python start-up per call, and is exercised on its own where it matters.
    def _db(self, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> T:
        async def run() -> T:
            engine = create_engine(normalise_database_url(self.stack.pg_dsn))
            try:
                return await work(create_sessionmaker(engine))
            finally:
                await engine.dispose()

        return asyncio.run(run())

    def user(self, credit_usd: str = "0") -> str:
        async def work(sessions: async_sessionmaker[AsyncSession]) -> str:
            async with sessions.begin() as s:
                return (await users.create_user(s, name="e2e-access")).id

        user_id = self._db(work)
        if credit_usd != "0":
            self.credit(user_id, credit_usd)
        return user_id

    def credit(self, user_id: str, usd: str) -> None:
        async def work(sessions: async_sessionmaker[AsyncSession]) -> None:
            async with sessions.begin() as s:
                await ledger.credit(
                    s, user_id, usd_to_nusd(usd), idempotency_key=secrets.token_hex(8), reason="e2e"
                )

        self._db(work)
        client = sync_redis.Redis.from_url(E2E_REDIS_URL)
        client.incr(keys.balance_version(user_id))
        client.delete(keys.balance(user_id))
        client.close()

    def key(self, user_id: str, **scope: Any) -> tuple[str, str]:
        secret = self.stack.env["API_KEY_HASH_SECRET"].encode()

        async def work(sessions: async_sessionmaker[AsyncSession]) -> tuple[str, str]:
            async with sessions.begin() as s:
                row, plaintext = await api_keys.create_api_key(s, user_id, secret=secret, **scope)
            return plaintext, row.id

        return self._db(work)

    def funded_key(self, credit_usd: str = "1", **scope: Any) -> tuple[str, str]:
        user_id = self.user(credit_usd)
        return user_id, self.key(user_id, **scope)[0]

    def user_of(self, sub: str) -> str | None:
        rows = self.stack.query("SELECT id FROM users WHERE external_id = $1", sub)
        return rows[0]["id"] if rows else None


@pytest.fixture(scope="module")
def access(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccessStack]:
    es, rs = SigningKey.generate("ES256", "es-e2e"), SigningKey.generate("RS256", "rs-e2e")
    with JwksThread(JwksState(keys=[es, rs]), free_port()) as jwks:
        env = {
            "SUPABASE_URL": jwks.url,
            "SUPABASE_JWT_SECRET": JWT_SECRET,
            "SUPABASE_ANON_KEY": "e2e-anon-key",
            "API_KEY_HASH_SECRET": secrets.token_hex(24),
        }
        with running_stack(tmp_path_factory, env_overrides=env) as stack:
            running = AccessStack(stack, jwks, es, rs)
            running.start_api("api2")
            running.start_api("api3")
            yield running


class TestSupabaseTokens:
    def test_es256_rs256_hs256_tokens_work_through_the_sdk(self, access: AccessStack) -> None:
        issuer = access.jwks.url + "/auth/v1"
        tokens: dict[str, Callable[[str], str]] = {
            "es": lambda sub: access.es.mint(claims(issuer, sub)),
            "rs": lambda sub: access.rs.mint(claims(issuer, sub)),
            "hs": lambda sub: jwt.encode(claims(issuer, sub), JWT_SECRET, algorithm="HS256"),
        }
        for kind, mint in tokens.items():
            sub = f"e2e-{kind}-{secrets.token_hex(4)}"
            client = access.client(mint(sub), api=1)
            # First sight creates the user with an empty wallet: 402 until credited.
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(**CHAT)
            assert caught.value.status_code == 402
            user_id = access.user_of(sub)
            assert user_id is not None, f"{kind}: no user for {sub}"
            access.credit(user_id, "1")
            completion = client.chat.completions.create(**CHAT)
            assert completion.choices[0].message.content
        assert access.jwks.state.apikeys and set(access.jwks.state.apikeys) == {"e2e-anon-key"}

    def test_forged_token_is_401(self, access: AccessStack) -> None:
        impostor = SigningKey.generate("ES256", "es-e2e")
        client = access.client(impostor.mint(claims(access.jwks.url + "/auth/v1")))
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(**CHAT)
        assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "invalid_api_key"


class TestRevocation:
    def test_revoked_key_is_refused_on_another_process_within_a_second(
        self, access: AccessStack
    ) -> None:
        user_id = access.user("1")
        key, key_id = access.key(user_id)
        for api in range(3):  # every process has the key cached now
            assert access.client(key, api).chat.completions.create(**CHAT).choices
        done = subprocess.run(
            [sys.executable, "-m", "services.cli", "keys", "revoke", key_id],
            env=access.stack.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        revoked_at = time.monotonic()
        assert done.returncode == 0, done.stderr
        # Pub/sub spans Redis databases: other stacks on this server may hear it too.
        heard = re.search(r"(\d+) api process\(es\) dropped it", done.stderr)
        assert heard and int(heard[1]) >= 3, done.stderr
        refused_after_s = None
        while time.monotonic() - revoked_at < 5:
            try:
                access.client(key, api=2).chat.completions.create(**CHAT)
            except openai.AuthenticationError:
                refused_after_s = time.monotonic() - revoked_at
                break
        assert refused_after_s is not None and refused_after_s < 1.0
        print(f"\nrevoked key refused by another api process {refused_after_s * 1000:.0f} ms after the CLI returned")
        for api in (0, 1):
            with pytest.raises(openai.AuthenticationError):
                access.client(key, api).chat.completions.create(**CHAT)


async def _post(http: aiohttp.ClientSession, url: str, key: str, **extra: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}", **extra}
    async with http.post(url + "/v1/chat/completions", json=CHAT, headers=headers) as resp:
        await resp.read()
        return resp.status, resp.headers


class TestSharedRateLimit:
    RPM = 12

    def test_a_burst_over_three_processes_gets_one_allowance(self, access: AccessStack) -> None:
        user_id = access.user("5")
        # Scopes through the CLI, as an operator would set them.
        key, key_id = access.cli_key(
            user_id, "--rpm", str(self.RPM), "--models", "gpt-4o-mini,gpt-4o", "--monthly-limit", "5"
        )
        scope = access.stack.query(
            "SELECT allowed_models, rate_limit_rpm, monthly_spend_limit_nusd FROM api_keys WHERE id = $1",
            key_id,
        )[0]
        assert scope["rate_limit_rpm"] == self.RPM and scope["monthly_spend_limit_nusd"] == 5 * 10**9
        assert orjson.loads(scope["allowed_models"]) == ["gpt-4o-mini", "gpt-4o"]
        other, _ = access.key(user_id)

        async def burst() -> tuple[list[tuple[int, Any]], float]:
            async with aiohttp.ClientSession() as http:
                started = time.monotonic()
                results = await asyncio.gather(
                    *(_post(http, access.api_urls[i % 3], key) for i in range(3 * self.RPM))
                )
                return list(results), time.monotonic() - started

        results, elapsed_s = asyncio.run(burst())
        ok = [h for s, h in results if s == 200]
        limited = [h for s, h in results if s == 429]
        assert len(ok) + len(limited) == len(results)
        # GCRA refills one request every 60/RPM s: what the burst may add while it runs.
        refill = int(elapsed_s / (60 / self.RPM))
        assert self.RPM <= len(ok) <= self.RPM + refill, (len(ok), elapsed_s)
        print(f"\nburst of {len(results)} over 3 api processes in {elapsed_s:.2f} s: {len(ok)} admitted")
        assert sorted(int(h["x-ratelimit-remaining-requests"]) for h in ok)[: self.RPM] == list(
            range(self.RPM)
        ) or refill > 0
        for headers in limited:
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert int(headers["retry-after"]) >= 1
            assert headers["x-ratelimit-limit-requests"] == str(self.RPM)
        # Another key is not affected.
        assert access.client(other, 2).chat.completions.create(**CHAT).choices
        # Billing added each settled cost to the key's spend counter (the monthly cap).
        month = time.strftime("%Y%m", time.gmtime())
        client = sync_redis.Redis.from_url(E2E_REDIS_URL)

        def counted() -> bool:
            settled = access.stack.query(
                "SELECT count(*) AS n, COALESCE(SUM(cost_nusd), 0) AS total FROM usage_records "
                "WHERE key_id = $1", key_id,
            )[0]  # fmt: skip
            counter = client.get(keys.key_spend(key_id, month))
            return settled["n"] == len(ok) and counter is not None and int(counter) == settled["total"]

        access.stack.wait_until(counted, what="the key's spend counter to match its usage rows")
        client.close()

    def test_headers_decrease_across_processes(self, access: AccessStack) -> None:
        _user_id, key = access.funded_key("5", rate_limit_rpm=30)

        async def sequence() -> list[int]:
            async with aiohttp.ClientSession() as http:
                seen = []
                for i in range(6):
                    status, headers = await _post(http, access.api_urls[i % 3], key)
                    assert status == 200 and headers["x-ratelimit-limit-requests"] == "30"
                    assert headers["x-ratelimit-reset-requests"].endswith("s")
                    seen.append(int(headers["x-ratelimit-remaining-requests"]))
                return seen

        remaining = asyncio.run(sequence())
        assert remaining == sorted(remaining, reverse=True) and remaining[0] == 29
        assert remaining[-1] <= 24 + 1  # at most one refilled during the sequence


class TestResponseCache:
    def test_hits_are_marked_billed_at_zero_and_never_cross_users(self, access: AccessStack) -> None:
        (user_a, key_a), (_user_b, key_b) = access.funded_key(), access.funded_key()
        cache = {"x-gateway-cache": "true", "x-gateway-cache-ttl": "60"}

        def ask(key: str, api: int) -> Any:
            return access.client(key, api).chat.completions.with_raw_response.create(
                **CHAT, extra_headers=cache
            )

        first = ask(key_a, 0)
        assert first.headers["x-gateway-cache"] == "miss"
        again = ask(key_a, 1)  # another process: the cache is shared
        assert again.headers["x-gateway-cache"] == "hit"
        assert again.headers["x-gateway-cost"] == "0.000000000"
        assert again.parse().id == first.parse().id
        assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
        other = ask(key_b, 1)
        assert other.headers["x-gateway-cache"] == "miss"
        assert other.parse().id != first.parse().id
        plain = access.client(key_a, 2).chat.completions.with_raw_response.create(**CHAT)
        assert "x-gateway-cache" not in plain.headers

        hit_id = again.headers["x-request-id"]
        rows = access.stack.wait_until(
            lambda: access.stack.query("SELECT * FROM usage_records WHERE request_id = $1", hit_id),
            what="the cache hit's usage row",
        )
        assert rows[0]["provider"] == "cache" and rows[0]["cost_nusd"] == 0
        assert rows[0]["user_id"] == user_a


class TestBadKeys:
    def test_random_keys_never_reach_the_jobs_stream(self, access: AccessStack) -> None:
        client = sync_redis.Redis.from_url(E2E_REDIS_URL)
        jobs_before = client.xlen(keys.JOBS_STREAM)
        users_before = access.stack.query("SELECT count(*) FROM users")[0][0]

        async def flood() -> dict[int, int]:
            counts: dict[int, int] = {}
            sem = asyncio.Semaphore(48)
            async with aiohttp.ClientSession() as http:

                async def one(i: int) -> None:
                    key = "gw-" + secrets.token_urlsafe(36) if i % 2 else secrets.token_hex(20)
                    async with sem:
                        status, _ = await _post(http, access.api_urls[i % 3], key)
                    counts[status] = counts.get(status, 0) + 1

                await asyncio.gather(*(one(i) for i in range(1500)))
            return counts

        counts = asyncio.run(flood())
        assert sum(counts.values()) == 1500 and set(counts) <= {401, 429}
        assert client.xlen(keys.JOBS_STREAM) == jobs_before
        assert access.stack.query("SELECT count(*) FROM users")[0][0] == users_before
        client.close()
