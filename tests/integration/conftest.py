"""Integration fixtures: the same test against both databases the gateway supports."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


@pytest.fixture(params=["postgresql", "sqlite"])
def any_sessions(request: pytest.FixtureRequest) -> async_sessionmaker[AsyncSession]:
    """Sessions on a migrated PostgreSQL database, then on a migrated SQLite file."""
    name = "sessions" if request.param == "postgresql" else "sqlite_sessions"
    sessions: async_sessionmaker[AsyncSession] = request.getfixturevalue(name)
    return sessions
