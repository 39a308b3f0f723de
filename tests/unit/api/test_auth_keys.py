"""API keys through the Authenticator, on a real (migrated SQLite) database.

Every statement the database runs is counted, so "no database on the hot path" is
checked, not assumed.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from multidict import CIMultiDict
from sqlalchemy import event, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.api.auth import Authenticator, LookupRation, Principal
from shared.db.models import ApiKey
from shared.db.repositories import api_keys, users
from shared.errors import RateLimited, Unauthorized

SECRET = b"unit-test-key-hash-secret"


class FakeRequest:
    """What `authenticate` reads of a request: its headers."""

    def __init__(self, **headers: str) -> None:
        self.headers = CIMultiDict(headers)


def header(name: str, value: str) -> Any:
    return FakeRequest(**{name: value})


def bearer(key: str) -> Any:
    return header("Authorization", f"Bearer {key}")


@pytest.fixture
def statements(sqlite_engine: AsyncEngine) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(sqlite_engine.sync_engine, "before_cursor_execute", count)
    yield seen
    event.remove(sqlite_engine.sync_engine, "before_cursor_execute", count)


@pytest.fixture
def auth(sqlite_sessions: async_sessionmaker[AsyncSession]) -> Authenticator:
    return Authenticator(sqlite_sessions, cache_ttl_s=300, key_secret=SECRET, unknown_lookups_per_s=5)


async def new_key(
    sessions: async_sessionmaker[AsyncSession], **scope: Any
) -> tuple[str, ApiKey]:
    async with sessions.begin() as s:
        user = await users.create_user(s)
        row, plaintext = await api_keys.create_api_key(s, user.id, secret=SECRET, **scope)
    return plaintext, row


def random_key() -> str:
    return "gw-" + secrets.token_urlsafe(36)


class TestKeys:
    async def test_valid_key_is_cached_after_one_lookup(
        self, auth: Authenticator, sqlite_sessions: async_sessionmaker[AsyncSession],
        statements: list[str],
    ) -> None:  # fmt: skip
        plaintext, row = await new_key(
            sqlite_sessions, allowed_models=["gpt-4o-mini"], rate_limit_rpm=7,
            monthly_spend_limit_nusd=123,
        )  # fmt: skip
        statements.clear()
        first = await auth.authenticate(bearer(plaintext))
        assert first == Principal(row.user_id, row.id, frozenset({"gpt-4o-mini"}), 7, 123)
        after_first = len(statements)
        for _ in range(50):
            assert await auth.authenticate(header("X-API-Key", plaintext)) == first
        assert len(statements) == after_first  # the cache answered
        assert auth.cache_hits["key"] == 50 and auth.cache_misses["key"] == 1
        assert auth.db_lookups == 1

    async def test_malformed_keys_cost_nothing(
        self, auth: Authenticator, statements: list[str]
    ) -> None:
        for bad in ("nope", "gw-short", "sk-" + "a" * 48, "gw-" + "!" * 48, "gw-" + "a" * 49):
            with pytest.raises(Unauthorized):
                await auth.authenticate(bearer(bad))
        with pytest.raises(Unauthorized, match="Missing API key"):
            await auth.authenticate(header("X-Other", ""))
        assert statements == [] and auth.malformed == 5

    async def test_unknown_key_is_looked_up_once_then_negative_cached(
        self, auth: Authenticator, statements: list[str]
    ) -> None:
        key = random_key()
        for _ in range(20):
            with pytest.raises(Unauthorized):
                await auth.authenticate(bearer(key))
        assert auth.db_lookups == 1 and auth.cache_hits["key_negative"] == 19

    async def test_a_flood_of_random_keys_is_rationed(
        self, auth: Authenticator, sqlite_sessions: async_sessionmaker[AsyncSession],
        statements: list[str],
    ) -> None:  # fmt: skip
        good, _row = await new_key(sqlite_sessions)
        await auth.authenticate(bearer(good))
        results = await asyncio.gather(
            *(auth.authenticate(bearer(random_key())) for _ in range(500)), return_exceptions=True
        )
        assert all(isinstance(r, Unauthorized | RateLimited) for r in results)
        # Burst of 10 (twice 5/s), plus what refilled while the flood ran.
        assert auth.db_lookups <= 1 + 10 + 5
        assert auth.lookups_rationed >= 480
        # A key already known is never rationed.
        assert (await auth.authenticate(bearer(good))).key_id is not None

    async def test_revoked_and_expired_keys(
        self, auth: Authenticator, sqlite_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        plaintext, row = await new_key(sqlite_sessions)
        await auth.authenticate(bearer(plaintext))
        async with sqlite_sessions.begin() as s:
            await api_keys.revoke_api_key(s, row.id)
        assert (await auth.authenticate(bearer(plaintext))).key_id == row.id  # still cached
        assert auth.forget_key(row.id) == 1
        with pytest.raises(Unauthorized):
            await auth.authenticate(bearer(plaintext))

        soon = datetime.now(UTC) + timedelta(seconds=1)
        expiring, _ = await new_key(sqlite_sessions, expires_at=soon)
        await auth.authenticate(bearer(expiring))
        await asyncio.sleep(1.05)
        with pytest.raises(Unauthorized):  # the cached entry knows its expiry
            await auth.authenticate(bearer(expiring))

    async def test_legacy_sha256_rows_are_accepted_and_rehashed(
        self, auth: Authenticator, sqlite_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        plaintext, row = await new_key(sqlite_sessions)
        async with sqlite_sessions.begin() as s:
            await s.execute(
                update(ApiKey)
                .where(ApiKey.id == row.id)
                .values(key_hash=api_keys.legacy_hash_api_key(plaintext))
            )
        assert (await auth.authenticate(bearer(plaintext))).key_id == row.id
        async with sqlite_sessions() as s:
            stored = await s.scalar(select(ApiKey.key_hash).where(ApiKey.id == row.id))
        assert stored == api_keys.hash_api_key(plaintext, SECRET)

    async def test_last_used_is_written_once_per_flush(
        self, auth: Authenticator, sqlite_sessions: async_sessionmaker[AsyncSession],
        statements: list[str],
    ) -> None:  # fmt: skip
        one, row1 = await new_key(sqlite_sessions)
        two, row2 = await new_key(sqlite_sessions)
        for _ in range(30):
            await auth.authenticate(bearer(one))
            await auth.authenticate(bearer(two))
        statements.clear()
        assert await auth.flush_last_used() == 2
        assert sum(s.lstrip().upper().startswith("UPDATE") for s in statements) == 1
        async with sqlite_sessions() as s:
            used = (await s.scalars(select(ApiKey.last_used_at).where(ApiKey.id.in_([row1.id, row2.id])))).all()
        assert all(u is not None for u in used)
        assert await auth.flush_last_used() == 0  # nothing used since


def test_lookup_ration_refills() -> None:
    now = [0.0]
    ration = LookupRation(per_s=2, burst=2, clock=lambda: now[0])
    assert [ration.take() for _ in range(3)] == [True, True, False]
    now[0] += 0.5
    assert [ration.take(), ration.take()] == [True, False]
