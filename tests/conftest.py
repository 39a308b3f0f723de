"""Fixtures shared by every test package.

Databases (the real schema, migrated by Alembic):
    pg_url          session: a fresh PostgreSQL database `gw_test_<hex>`, dropped at the end.
                    Fails (not skips) when PostgreSQL is unreachable. TEST_POSTGRES_URL
                    overrides the server (default postgresql://postgres@127.0.0.1:5432/test).
    engine          AsyncEngine on pg_url; every table is truncated before each test.
    sessions        async_sessionmaker on `engine`: `async with sessions.begin() as s: ...`
    sqlite_url      a migrated SQLite file of the test's own (tmp_path); sync fixture.
    sqlite_engine / sqlite_sessions   the same pair on sqlite_url.

Redis:
    redis_url       TEST_REDIS_URL (default redis://127.0.0.1:6379/15).
    redis           a real redis.asyncio client on it, FLUSHDB before and after the test.
    fake_redis      fakeredis (with Lua) on a server of the test's own.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
import pytest_asyncio
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.db.engine import create_engine, create_sessionmaker
from shared.db.migrate import upgrade_to_head
from shared.db.models import Base
from shared.settings import normalise_database_url

POSTGRES_SERVER_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"

_TABLES = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)


# --- PostgreSQL --------------------------------------------------------------------------


async def _pg_admin(statement: str) -> None:
    dsn = make_url(POSTGRES_SERVER_URL).set(drivername="postgresql")
    conn = await asyncpg.connect(dsn.render_as_string(hide_password=False), timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated PostgreSQL database for this test session (asyncpg URL)."""
    name = f"gw_test_{secrets.token_hex(4)}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(
            f"PostgreSQL is required for these tests and is not usable at "
            f"{make_url(POSTGRES_SERVER_URL).render_as_string(hide_password=True)}: {exc!r}",
            pytrace=False,
        )
    url = normalise_database_url(
        make_url(POSTGRES_SERVER_URL).set(database=name).render_as_string(hide_password=False)
    )
    try:
        upgrade_to_head(url)
        yield url
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest_asyncio.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the session's PostgreSQL database, emptied before the test."""
    eng = create_engine(pg_url)
    async with eng.begin() as conn:
        await conn.execute(text(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE"))
    yield eng
    await eng.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


# --- SQLite ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Migrate once; each test gets a copy of the file (much faster than migrating again).
    path = tmp_path_factory.mktemp("sqlite-template") / "gateway.db"
    upgrade_to_head(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, _sqlite_template: Path) -> str:
    """A migrated SQLite database file of this test's own (aiosqlite URL)."""
    path = tmp_path / "gateway.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest_asyncio.fixture
async def sqlite_engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(sqlite_url)
    yield eng
    await eng.dispose()


@pytest.fixture
def sqlite_sessions(sqlite_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(sqlite_engine)


# --- Redis -------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    return os.environ.get("TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A real Redis client on an emptied database (TEST_REDIS_URL)."""
    client = Redis.from_url(redis_url)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        pytest.fail(f"Redis is required for this test and is not reachable: {exc!r}", pytrace=False)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest_asyncio.fixture
async def fake_redis() -> AsyncIterator[FakeRedis]:
    """fakeredis with Lua, on a server no other test shares."""
    client = FakeRedis(server=FakeServer())
    yield client
    await client.aclose()
