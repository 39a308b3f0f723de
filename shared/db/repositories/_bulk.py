"""Many rows in one `INSERT ... SELECT FROM unnest(...)` on PostgreSQL.

Settlement inserts a batch of usage and ledger rows per transaction. SQLAlchemy's
executemany sends a multi-row VALUES statement whose text, and so whose server-side
prepared statement, changes with the number of rows; batches vary in size, so nearly
every batch paid for a new PREPARE and for binding rows × columns parameters one by one
in Python. Here each column travels as one array parameter: the statement text depends
only on the table and its columns, asyncpg prepares it once per connection and encodes
the arrays in C, and the row count no longer matters.

PostgreSQL only; callers keep their portable path for SQLite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import orjson
from sqlalchemy import JSON, Table, TextClause, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


@cache
def _statement(
    table: Table, columns: tuple[str, ...], conflict_column: str | None, returning: str | None
) -> tuple[TextClause, tuple[bool, ...]]:
    """The statement for these columns, and which of them are JSON (sent as text)."""
    casts = []
    is_json = []
    for name in columns:
        column_type = table.c[name].type
        json_column = isinstance(column_type, JSON)
        is_json.append(json_column)
        # JSON values go as text; the server parses each element on the cast.
        element = "text" if json_column else column_type.compile(dialect=_PG)
        casts.append(f"CAST(:{name} AS {element}[])")
    targets = ", ".join(columns)
    select_list = ", ".join(
        f"{name}::json" if json_column else name
        for name, json_column in zip(columns, is_json, strict=True)
    )
    sql = (
        f"INSERT INTO {table.name} ({targets}) "
        f"SELECT {select_list} FROM unnest({', '.join(casts)}) AS rows ({targets})"
    )
    if conflict_column is not None:
        sql += f" ON CONFLICT ({conflict_column}) DO NOTHING"
    if returning is not None:
        sql += f" RETURNING {returning}"
    return text(sql), tuple(is_json)


async def insert_unnest(
    session: AsyncSession,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    conflict_column: str | None = None,
    returning: str | None = None,
) -> list[Any]:
    """Insert `rows` (all with the same keys) in one statement; the `returning` column of
    each inserted row (rows skipped on a conflict return nothing)."""
    if not rows:
        return []
    columns = tuple(rows[0])
    stmt, is_json = _statement(table, columns, conflict_column, returning)
    params: dict[str, list[Any]] = {}
    for name, json_column in zip(columns, is_json, strict=True):
        values = [row[name] for row in rows]
        if json_column:
            values = [None if v is None else orjson.dumps(v).decode() for v in values]
        params[name] = values
    result = await session.execute(stmt, params)
    return list(result.scalars().all()) if returning is not None else []
