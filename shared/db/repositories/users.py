"""Users and their wallets: every user gets exactly one wallet, created with it."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import User, Wallet
from shared.db.repositories._dialect import insert_or_ignore


def new_user_id() -> str:
    return "usr_" + secrets.token_hex(12)


async def create_user(
    session: AsyncSession,
    *,
    email: str | None = None,
    name: str | None = None,
    external_id: str | None = None,
) -> User:
    """Create a user and its empty wallet (balance 0)."""
    user = User(id=new_user_id(), email=email, name=name, external_id=external_id)
    session.add(user)
    session.add(Wallet(user_id=user.id, balance_nusd=0))
    await session.flush()
    return user


async def get_user(session: AsyncSession, user_id: str) -> User | None:
    return await session.get(User, user_id)


async def list_users(session: AsyncSession, *, limit: int = 100, offset: int = 0) -> Sequence[User]:
    """Users, oldest first."""
    stmt = select(User).order_by(User.created_at, User.id).limit(limit).offset(offset)
    return (await session.scalars(stmt)).all()


async def get_by_external_id(session: AsyncSession, external_id: str) -> User | None:
    return await session.scalar(select(User).where(User.external_id == external_id))


async def get_or_create_by_external_id(
    session: AsyncSession, external_id: str, email: str | None = None
) -> User:
    """The user for an identity provider's subject, created (with its wallet) on first sight.

    Race-safe: two first requests for the same subject insert with ON CONFLICT DO
    NOTHING on the unique external_id, so one wins and both read the same row.
    """
    existing = await get_by_external_id(session, external_id)
    if existing is not None:
        return existing
    user_id = new_user_id()
    stmt = (
        insert_or_ignore(session, User.__table__, "external_id")  # type: ignore[arg-type]
        .values(id=user_id, external_id=external_id, email=email)
        .returning(User.__table__.c.id)
    )
    created = (await session.execute(stmt)).scalar_one_or_none()
    if created is not None:
        await session.execute(insert(Wallet).values(user_id=created, balance_nusd=0))
    user = await get_by_external_id(session, external_id)
    if user is None:  # pragma: no cover - the conflicting insert was rolled back meanwhile
        raise RuntimeError(f"user for external id vanished during creation: {external_id!r}")
    return user
