"""An api process in-process: fakeredis, a migrated SQLite file, an admin token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fakeredis.aioredis import FakeRedis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.app import create_app
from shared.settings import Settings

ADMIN_TOKEN = "admin-" + "t" * 32
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def api_settings(tmp_path: Path, **changes: object) -> Settings:
    base = Settings(var_dir=tmp_path / "var", admin_token=ADMIN_TOKEN, demo_mode=True)
    return base.with_overrides(**changes) if changes else base


@pytest_asyncio.fixture
async def api(
    tmp_path: Path, fake_redis: FakeRedis, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = create_app(
        api_settings(tmp_path), redis_url="", redis=fake_redis, sessions=sqlite_sessions
    )
    async with TestClient(TestServer(app)) as client:
        yield client
