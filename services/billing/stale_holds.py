"""Expire holds that outlived their request (admission sets each hold's expiry to the
request's deadline plus a grace period), and repair `gw:held:{user}` on the way.

A hold past its expiry belongs to a request that will never be settled normally (its
job was dropped, or its event was lost), so keeping it would only lock the user's funds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog

from shared.redis import keys
from shared.redis.holds import HoldStore

log = structlog.get_logger("billing.stale_holds")


@dataclass(slots=True)
class HoldFix:
    user_id: str
    request_id: str


@dataclass(slots=True)
class StaleHoldsReport:
    users_scanned: int = 0
    expired: list[HoldFix] = field(default_factory=list)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def users_with_hold_state(store: HoldStore) -> set[str]:
    """Users with a holds hash or a held total (a total without holds is drift too)."""
    users = {user async for user in store.users_with_holds()}
    prefix = keys.held_total("")
    async for key in store.redis.scan_iter(match=keys.held_total("*"), count=500):
        users.add((key.decode() if isinstance(key, bytes) else key).removeprefix(prefix))
    return users


async def expire_stale_holds(store: HoldStore, *, at_ms: int | None = None) -> StaleHoldsReport:
    """Remove every hold whose expiry passed and recompute each user's held total."""
    report = StaleHoldsReport()
    cutoff = at_ms if at_ms is not None else now_ms()
    for user_id in sorted(await users_with_hold_state(store)):
        report.users_scanned += 1
        dropped = await store.expire(user_id, cutoff)
        for request_id in dropped.request_ids:
            report.expired.append(HoldFix(user_id, request_id))
            log.warning("hold_expired", user_id=user_id, request_id=request_id)
    return report
