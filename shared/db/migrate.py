"""Run the Alembic migrations from code: `gateway migrate`, test fixtures, embedded start-up.

`upgrade_to_head` is synchronous because Alembic's env.py drives its own event loop
(`asyncio.run`); `upgrade_to_head_async` moves it to a thread for callers that are
already inside a loop.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

ALEMBIC_DIR = Path(__file__).resolve().parents[2] / "alembic"


def alembic_config(database_url: str) -> Config:
    """An Alembic config for `database_url` that leaves the host's logging alone."""
    cfg = Config()
    # ConfigParser interpolates '%', which may appear in a checkout path.
    cfg.set_main_option("script_location", str(ALEMBIC_DIR).replace("%", "%%"))
    cfg.attributes["database_url"] = database_url
    cfg.attributes["configure_logging"] = False
    return cfg


def head_revision() -> str:
    """The newest migration's revision id."""
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found under {ALEMBIC_DIR}")
    return head


def upgrade_to_head(database_url: str) -> None:
    """Migrate `database_url` to the newest schema. Safe to run again (no-op when current)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        command.upgrade(alembic_config(database_url), "head")
        return
    # Called from synchronous code inside a running loop: env.py cannot start its own
    # loop here, so run it on a fresh thread (this blocks the caller's loop meanwhile).
    errors: list[BaseException] = []

    def target() -> None:
        try:
            command.upgrade(alembic_config(database_url), "head")
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)

    thread = threading.Thread(target=target, name="alembic-upgrade")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


async def upgrade_to_head_async(database_url: str) -> None:
    """`upgrade_to_head` for async callers; the loop keeps running meanwhile."""
    await asyncio.to_thread(upgrade_to_head, database_url)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current)
