"""The Alembic migrations build exactly the schema of shared/db/models.py, on both databases."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from shared.db.engine import create_engine
from shared.db.migrate import (
    current_revision,
    head_revision,
    upgrade_to_head,
    upgrade_to_head_async,
)
from shared.db.models import Base

EXPECTED_TABLES = {"users", "api_keys", "wallets", "ledger_transactions", "usage_records"}


def _diff(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


@pytest.fixture(params=["postgresql", "sqlite"])
def migrated_url(request: pytest.FixtureRequest) -> str:
    name = "pg_url" if request.param == "postgresql" else "sqlite_url"
    url: str = request.getfixturevalue(name)
    return url


async def test_schema_matches_models(migrated_url: str) -> None:
    engine = create_engine(migrated_url)
    try:
        assert await current_revision(engine) == head_revision()
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) >= EXPECTED_TABLES
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_upgrade_again_is_a_no_op(migrated_url: str) -> None:
    await upgrade_to_head_async(migrated_url)
    engine = create_engine(migrated_url)
    try:
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()


def test_upgrade_fresh_sqlite_without_a_loop(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'dir' / 'gw.db'}"
    upgrade_to_head(url)  # creates the missing directories too

    async def check() -> str | None:
        engine = create_engine(url)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    assert asyncio.run(check()) == head_revision()


async def test_upgrade_from_inside_a_running_loop(tmp_path: Path) -> None:
    # Sync call from a coroutine: must not trip over the running loop.
    sync_url = f"sqlite+aiosqlite:///{tmp_path / 'sync.db'}"
    upgrade_to_head(sync_url)
    async_url = f"sqlite+aiosqlite:///{tmp_path / 'async.db'}"
    await upgrade_to_head_async(async_url)
    for url in (sync_url, async_url):
        engine = create_engine(url)
        try:
            assert await current_revision(engine) == head_revision()
        finally:
            await engine.dispose()


async def test_unmigrated_database_has_no_revision(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    try:
        assert await current_revision(engine) is None
    finally:
        await engine.dispose()
