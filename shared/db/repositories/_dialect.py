"""`INSERT ... ON CONFLICT DO NOTHING` for whichever database the session is bound to.

Used where a duplicate is an expected outcome (a redelivered event, two logins racing
to create the same user). It needs no SAVEPOINT, so it leaves the surrounding
transaction intact on PostgreSQL and starts a real one on SQLite.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def insert_or_ignore(session: AsyncSession, table: Table, conflict_column: str) -> Any:
    """An insert into `table` that does nothing when `conflict_column` already has the value."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[conflict_column])
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=[conflict_column])
    raise NotImplementedError(f"unsupported database: {dialect}")
