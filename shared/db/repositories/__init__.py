"""All SQL lives here. Each function takes an AsyncSession first and never commits:
the caller's `async with sessions.begin()` owns the transaction."""

from shared.db.repositories import api_keys, ledger, usage, users

__all__ = ["api_keys", "ledger", "usage", "users"]
