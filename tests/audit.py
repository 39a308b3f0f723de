"""The ledger audit every fault test, the fuzz run and the soak end with.

    await wait_settled(pg_dsn, redis_url)          # billing caught up, nothing in flight
    report = await audit(pg_dsn, redis_url, seen)  # `seen`: what the clients saw
    report.assert_clean()

What it proves, from the database and Redis alone (never from the services' word):

- every request a client saw succeed has exactly one usage row and, when it cost
  anything, exactly one debit of that cost (and the `x-gateway-cost` a non-streaming
  client was shown is what it was charged);
- no request id has more than one usage row or debit (nothing charged twice);
- no debit without a usage row, no usage row with a cost but no debit, and each
  debit equals its usage row's cost;
- every wallet's balance equals the sum of its ledger rows;
- no fund hold is left (`gw:holds:*` empty, `gw:held:*` zero);
- no job and no completion event is pending or undelivered (`XPENDING`, group lag),
  and nothing was dead-lettered (an event billing could never settle).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.money import usd_to_nusd
from shared.redis import keys

DEAD_LETTER_STREAM = "gw:events:dead"


class ClientView(Protocol):
    """What the audit needs of one client's outcome (tests/faults/load.py `Seen`)."""

    ok: bool
    request_id: str | None
    stream: bool
    cost_header: str | None


@dataclass(slots=True)
class StreamState:
    pending: int = 0
    lag: int = 0  # entries never delivered to the group
    length: int = 0


@dataclass(slots=True)
class AuditReport:
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def discrepancies(self) -> int:
        return len(self.problems)

    def assert_clean(self) -> None:
        assert not self.problems, "ledger audit failed:\n  " + "\n  ".join(self.problems[:50])


async def stream_state(redis: Redis, stream: str, group: str) -> StreamState:
    """Pending and undelivered entries of a consumer group (zero when there is no stream)."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream: nothing was ever queued
        return StreamState()
    length = int(await redis.xlen(stream))
    for info in groups:
        name = info["name"]
        if (name.decode() if isinstance(name, bytes) else name) == group:
            lag = info.get("lag")
            return StreamState(
                pending=int(info["pending"]),
                lag=int(lag) if lag is not None else 0,
                length=length,
            )
    # No group yet: every entry is undelivered.
    return StreamState(lag=length, length=length)


async def open_holds(redis: Redis) -> dict[str, int]:
    """Per holds-key entry counts plus non-zero held totals: empty when all is released."""
    found: dict[str, int] = {}
    async for key in redis.scan_iter(match="gw:holds:*", count=500):
        count = int(await redis.hlen(key))
        if count:
            found[key.decode()] = count
    async for key in redis.scan_iter(match="gw:held:*", count=500):
        value = await redis.get(key)
        if value is not None and int(value) != 0:
            found[key.decode()] = int(value)
    return found


async def in_flight(redis_url: str) -> dict[str, Any]:
    """What is still on its way through the system (empty dict: settled)."""
    redis = Redis.from_url(redis_url)
    try:
        jobs = await stream_state(redis, keys.JOBS_STREAM, keys.JOBS_GROUP)
        events = await stream_state(redis, keys.EVENTS_STREAM, keys.EVENTS_GROUP)
        holds = await open_holds(redis)
    finally:
        await redis.aclose()
    busy: dict[str, Any] = {}
    if jobs.pending or jobs.lag:
        busy["jobs"] = jobs
    if events.pending or events.lag:
        busy["events"] = events
    if holds:
        busy["holds"] = holds
    return busy


async def wait_settled(redis_url: str, *, timeout_s: float = 60.0) -> None:
    """Wait until no job, event or hold is in flight; fail with what is stuck."""
    deadline = time.monotonic() + timeout_s
    busy: dict[str, Any] = {}
    while time.monotonic() < deadline:
        busy = await in_flight(redis_url)
        if not busy:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the system did not settle within {timeout_s} s: {busy}")


async def audit(
    pg_dsn: str, redis_url: str, seen: Iterable[ClientView] = ()
) -> AuditReport:
    """Check the ledger against the clients' view and itself; see the module docstring."""
    report = AuditReport()
    problems = report.problems
    seen = list(seen)
    conn = await asyncpg.connect(pg_dsn)
    try:
        usage_rows = await conn.fetch(
            "SELECT request_id, cost_nusd, status FROM usage_records"
        )
        debit_rows = await conn.fetch(
            "SELECT request_id, amount_nusd FROM ledger_transactions WHERE kind = 'debit'"
        )
        wallets = await conn.fetch(
            """
            SELECT w.user_id, w.balance_nusd, COALESCE(SUM(l.amount_nusd), 0) AS ledger_sum
            FROM wallets w LEFT JOIN ledger_transactions l ON l.user_id = w.user_id
            GROUP BY w.user_id, w.balance_nusd
            """
        )
    finally:
        await conn.close()

    usage: dict[str, list[Any]] = {}
    for row in usage_rows:
        usage.setdefault(row["request_id"], []).append(row)
    debits: dict[str | None, list[Any]] = {}
    for row in debit_rows:
        debits.setdefault(row["request_id"], []).append(row)

    for request_id, rows in usage.items():
        if len(rows) > 1:
            problems.append(f"{request_id}: {len(rows)} usage rows")
        cost = int(rows[0]["cost_nusd"])
        charged = debits.get(request_id, [])
        if len(charged) > 1:
            problems.append(f"{request_id}: charged {len(charged)} times")
        if cost > 0 and not charged:
            problems.append(f"{request_id}: usage row costs {cost} nUSD but has no debit")
        for debit in charged:
            if -int(debit["amount_nusd"]) != cost:
                problems.append(
                    f"{request_id}: debit {debit['amount_nusd']} != usage cost {cost}"
                )
    for request_id in debits:
        if request_id not in usage:
            problems.append(f"{request_id}: debit without a usage row")

    for view in seen:
        if not view.ok:
            continue
        if view.request_id is None:
            problems.append("a successful response carried no x-request-id")
            continue
        rows = usage.get(view.request_id, [])
        if len(rows) != 1:
            problems.append(f"{view.request_id}: client saw success, {len(rows)} usage rows")
            continue
        if rows[0]["status"] != "ok":
            problems.append(f"{view.request_id}: client saw success, usage says {rows[0]['status']}")
        if view.cost_header is not None:
            shown = usd_to_nusd(Decimal(view.cost_header))
            if shown != int(rows[0]["cost_nusd"]):
                problems.append(
                    f"{view.request_id}: shown cost {shown} != charged {rows[0]['cost_nusd']}"
                )

    for wallet in wallets:
        if int(wallet["balance_nusd"]) != int(wallet["ledger_sum"]):
            problems.append(
                f"wallet {wallet['user_id']}: balance {wallet['balance_nusd']} "
                f"!= ledger sum {wallet['ledger_sum']}"
            )

    redis = Redis.from_url(redis_url)
    try:
        holds = await open_holds(redis)
        jobs = await stream_state(redis, keys.JOBS_STREAM, keys.JOBS_GROUP)
        events = await stream_state(redis, keys.EVENTS_STREAM, keys.EVENTS_GROUP)
        dead = int(await redis.exists(DEAD_LETTER_STREAM) and await redis.xlen(DEAD_LETTER_STREAM))
    finally:
        await redis.aclose()
    for key, value in holds.items():
        problems.append(f"hold left: {key} = {value}")
    if jobs.pending or jobs.lag:
        problems.append(f"jobs in flight: {jobs.pending} pending, {jobs.lag} undelivered")
    if events.pending or events.lag:
        problems.append(f"events unsettled: {events.pending} pending, {events.lag} undelivered")
    if dead:
        problems.append(f"{dead} events dead-lettered (never settled)")

    report.counts = {
        "usage_rows": len(usage_rows),
        "debits": len(debit_rows),
        "wallets": len(wallets),
        "client_successes": sum(1 for v in seen if v.ok),
        "client_errors": sum(1 for v in seen if not v.ok),
    }
    return report
