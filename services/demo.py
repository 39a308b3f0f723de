"""The demo account that `make run` creates when no provider key is set.

Kept in `var/demo.json` (local, never committed) so restarts reuse the same user and
key instead of piling up new ones.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from redis.asyncio import Redis

from shared.db.engine import create_engine, create_sessionmaker
from shared.db.repositories.api_keys import create_api_key, find_active_key, hash_api_key
from shared.key_secret import load_key_secret
from shared.db.repositories.ledger import credit, get_balance
from shared.db.repositories.users import create_user, get_user
from shared.money import format_usd, usd_to_nusd
from shared.redis.funds import Funds
from shared.settings import Settings

DEMO_CREDIT_USD = Decimal("10")


@dataclass(frozen=True, slots=True)
class DemoAccount:
    user_id: str
    api_key: str
    balance_usd: str


async def ensure_demo_account(settings: Settings, var_dir: Path, *, redis_url: str | None) -> DemoAccount:
    state_file = var_dir / "demo.json"
    engine = create_engine(settings.effective_database_url)
    sessions = create_sessionmaker(engine)
    secret = load_key_secret(settings).value
    try:
        async with sessions.begin() as session:
            saved = json.loads(state_file.read_text()) if state_file.is_file() else {}
            user = await get_user(session, saved["user_id"]) if saved.get("user_id") else None
            key_ok = bool(
                user
                and saved.get("api_key")
                and await find_active_key(
                    session, hash_api_key(saved["api_key"], secret), datetime.now(UTC)
                )
            )
            if user is None:
                user = await create_user(session, name="demo", email="demo@localhost")
            if key_ok:
                api_key = saved["api_key"]
            else:
                _row, api_key = await create_api_key(session, user.id, secret=secret, name="demo")
            await credit(
                session,
                user.id,
                usd_to_nusd(DEMO_CREDIT_USD),
                idempotency_key=f"demo:{user.id}:initial-credit",
                reason="demo mode initial credit",
            )
            balance = await get_balance(session, user.id) or 0
        state_file.write_text(json.dumps({"user_id": user.id, "api_key": api_key}))
        state_file.chmod(0o600)
    finally:
        await engine.dispose()
    if redis_url:
        redis = Redis.from_url(redis_url)
        with contextlib.suppress(Exception):
            await Funds(redis).invalidate_balance(user.id)
        await redis.aclose()
    return DemoAccount(user_id=user.id, api_key=api_key, balance_usd=format_usd(balance))
