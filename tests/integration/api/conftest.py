"""The api application in-process, on the real PostgreSQL schema and a real Redis.

No worker runs here: these tests stop at admission (401/402/403/429 and the jobs
stream), which is where access control lives. `identity` is a fake Supabase-like
JWKS server with an ES256 and an RS256 key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.api.app import create_app
from services.api.appkeys import AUTH
from services.api.auth import Authenticator
from shared.db.repositories import api_keys, ledger, users
from shared.settings import Settings
from tests.fakes.jwks import JwksState, SigningKey, jwks_app

KEY_SECRET = "integration-api-key-hash-secret"
JWT_SECRET = "legacy-supabase-jwt-secret-with-32-chars"


@dataclass
class Identity:
    server: TestServer
    state: JwksState
    es: SigningKey
    rs: SigningKey

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def issuer(self) -> str:
        return self.url + "/auth/v1"


@pytest.fixture(scope="session")
def signing_keys() -> tuple[SigningKey, SigningKey]:
    return SigningKey.generate("ES256", "es-1"), SigningKey.generate("RS256", "rs-1")


@pytest_asyncio.fixture
async def identity(signing_keys: tuple[SigningKey, SigningKey]) -> AsyncIterator[Identity]:
    es, rs = signing_keys
    state = JwksState(keys=[es, rs])
    server = TestServer(jwks_app(state))
    await server.start_server()
    yield Identity(server, state, es, rs)
    await server.close()


@dataclass
class Api:
    server: TestServer
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    statements: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def auth(self) -> Authenticator:
        return self.server.app[AUTH]

    async def user(self, *, credit_usd: int = 0) -> str:
        async with self.sessions.begin() as s:
            user = await users.create_user(s)
            if credit_usd:
                await ledger.credit(
                    s, user.id, credit_usd * 10**9, idempotency_key=f"t:{user.id}", reason="test"
                )
        return user.id

    async def key(self, user_id: str, **scope: Any) -> tuple[str, str]:
        async with self.sessions.begin() as s:
            row, plaintext = await api_keys.create_api_key(
                s, user_id, secret=KEY_SECRET.encode(), **scope
            )
        return plaintext, row.id


ApiFactory = Callable[..., Any]


@pytest.fixture
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement the database runs during the test."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    yield seen
    event.remove(engine.sync_engine, "before_cursor_execute", count)


@pytest_asyncio.fixture
async def make_api(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, redis_url: str,
    identity: Identity, statements: list[str], tmp_path: Any,
) -> AsyncIterator[ApiFactory]:  # fmt: skip
    started: list[TestServer] = []

    async def start(**overrides: Any) -> Api:
        settings = Settings(
            api_key_hash_secret=KEY_SECRET,
            supabase_url=identity.url,
            supabase_jwt_secret=JWT_SECRET,
            supabase_anon_key="anon-key",
            var_dir=tmp_path,
            rate_limit_requests_per_minute=1000,
        ).with_overrides(**overrides)
        server = TestServer(create_app(settings, redis_url=redis_url, redis=redis, sessions=sessions))
        await server.start_server()
        started.append(server)
        return Api(server, sessions, redis, statements)

    yield start
    for server in started:
        await server.close()


@pytest_asyncio.fixture
async def api(make_api: ApiFactory) -> Api:
    result: Api = await make_api()
    return result
