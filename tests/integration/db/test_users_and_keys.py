"""Users (with their wallets) and API keys, on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import User, Wallet
from shared.db.repositories import api_keys, ledger, users

SECRET = b"integration-test-key-secret"


class TestUsers:
    async def test_create_user_makes_an_empty_wallet(
        self, any_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        async with any_sessions.begin() as s:
            user = await users.create_user(s, email="a@example.com", name="Ada")
        assert re.fullmatch(r"usr_[0-9a-f]{24}", user.id)
        async with any_sessions() as s:
            assert await ledger.get_balance(s, user.id) == 0
            fetched = await users.get_user(s, user.id)
            assert fetched is not None and fetched.email == "a@example.com"
            assert [u.id for u in await users.list_users(s)] == [user.id]
            assert await users.get_user(s, "usr_missing") is None

    async def test_get_or_create_by_external_id_is_idempotent(
        self, any_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        async with any_sessions.begin() as s:
            first = await users.get_or_create_by_external_id(s, "sub-1", "x@example.com")
        async with any_sessions.begin() as s:
            again = await users.get_or_create_by_external_id(s, "sub-1")
        assert again.id == first.id
        async with any_sessions() as s:
            assert await ledger.get_balance(s, first.id) == 0

    async def test_get_or_create_races_to_one_user(
        self, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        async def login() -> str:
            async with sessions.begin() as s:
                return (await users.get_or_create_by_external_id(s, "sub-race")).id

        ids = await asyncio.gather(*(login() for _ in range(8)))
        assert len(set(ids)) == 1
        async with sessions() as s:
            assert await s.scalar(select(func.count()).select_from(User)) == 1
            assert await s.scalar(select(func.count()).select_from(Wallet)) == 1


class TestApiKeys:
    def test_generated_keys_look_right(self) -> None:
        key = api_keys.generate_api_key()
        assert re.fullmatch(r"gw-[A-Za-z0-9_-]{48}", key)
        assert api_keys.generate_api_key() != key
        assert re.fullmatch(r"[0-9a-f]{64}", api_keys.hash_api_key(key, SECRET))
        assert api_keys.display_prefix(key) == key[:7] + "…"

    async def test_create_find_revoke(self, any_sessions: async_sessionmaker[AsyncSession]) -> None:
        now = datetime.now(UTC)
        async with any_sessions.begin() as s:
            user = await users.create_user(s)
            key, plaintext = await api_keys.create_api_key(s, user.id, secret=SECRET, name="ci")
        assert key.key_hash == api_keys.hash_api_key(plaintext, SECRET)
        assert plaintext not in (key.display_prefix, key.key_hash)
        async with any_sessions() as s:
            found = await api_keys.find_active_key(s, api_keys.hash_api_key(plaintext, SECRET), now)
            assert found is not None and found.id == key.id and found.user_id == user.id
            assert await api_keys.find_active_key(s, api_keys.hash_api_key("gw-nope", SECRET), now) is None
        async with any_sessions.begin() as s:
            revoked = await api_keys.revoke_api_key(s, key.id)
            assert revoked is not None and revoked.revoked_at is not None
            assert await api_keys.revoke_api_key(s, "key_missing") is None
        async with any_sessions() as s:
            assert await api_keys.find_active_key(s, key.key_hash, now) is None
            assert [k.id for k in await api_keys.list_api_keys(s, user.id)] == [key.id]

    async def test_expired_keys_are_not_active(
        self, any_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        now = datetime.now(UTC)
        async with any_sessions.begin() as s:
            user = await users.create_user(s)
            soon, _ = await api_keys.create_api_key(s, user.id, secret=SECRET, expires_at=now + timedelta(hours=1))
            past, _ = await api_keys.create_api_key(s, user.id, secret=SECRET, expires_at=now - timedelta(hours=1))
        async with any_sessions() as s:
            assert await api_keys.find_active_key(s, soon.key_hash, now) is not None
            assert await api_keys.find_active_key(s, past.key_hash, now) is None
            later = now + timedelta(hours=2)
            assert await api_keys.find_active_key(s, soon.key_hash, later) is None
            assert len(await api_keys.list_api_keys(s, user.id)) == 2
