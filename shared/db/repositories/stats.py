"""Operator queries over usage records: provider health, spend, traffic over time, errors.

Read-only. Time ranges are half-open, [start, end), on the row's `created_at` (when
billing settled the request, within a second of its end).

Percentiles use PostgreSQL's `percentile_cont` (linear interpolation). SQLite has no
ordered-set aggregates, so there the newest `limit` rows of the range are fetched and
the same interpolation is computed in Python: both databases give the same figures.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import UsageRecord, User

PERCENTILES = (0.5, 0.9, 0.99)
# SQLite computes percentiles in Python: at most this many rows are read.
DEFAULT_ROW_LIMIT = 100_000


class SpendGroup(StrEnum):
    USER = "user"
    MODEL = "model"
    DAY = "day"


class Bucket(StrEnum):
    HOUR = "hour"
    DAY = "day"


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        ordered = sorted(values)
        return cls(*(percentile_cont(ordered, p) for p in PERCENTILES))

    def to_dict(self) -> dict[str, float | None]:
        return {"p50": _round(self.p50), "p90": _round(self.p90), "p99": _round(self.p99)}


@dataclass(slots=True)
class ProviderStats:
    """One provider's figures for one model over a time range.

    `attempts` counts every call made to the provider (fallen-back failures included);
    `success_rate` is successful calls over successful plus technically failed ones:
    a business error (a bad request, a content policy refusal) is the request's fault,
    not the provider's, and a cancelled call says nothing either way.
    `requests` counts the requests this provider finally answered (or failed); latency,
    TTFT and tokens/s are taken over those of them that succeeded. Latency and TTFT run
    from the api queueing the request, as the client waits.
    """

    provider: str | None
    model: str | None
    requests: int = 0
    requests_ok: int = 0
    attempts: int = 0
    successes: int = 0
    technical_errors: int = 0
    business_errors: int = 0
    latency_ms: Percentiles = field(default_factory=Percentiles)
    ttft_ms: Percentiles = field(default_factory=Percentiles)
    tokens_per_second_p50: float | None = None
    tokens_per_second_avg: float | None = None

    @property
    def success_rate(self) -> float | None:
        judged = self.successes + self.technical_errors
        return round(self.successes / judged, 4) if judged else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "requests": self.requests,
            "requests_ok": self.requests_ok,
            "attempts": self.attempts,
            "successes": self.successes,
            "technical_errors": self.technical_errors,
            "business_errors": self.business_errors,
            "success_rate": self.success_rate,
            "latency_ms": self.latency_ms.to_dict(),
            "ttft_ms": self.ttft_ms.to_dict(),
            "tokens_per_second": {
                "p50": _round(self.tokens_per_second_p50),
                "avg": _round(self.tokens_per_second_avg),
            },
        }


@dataclass(frozen=True, slots=True)
class SpendRow:
    key: str  # user id, model id or YYYY-MM-DD
    requests: int
    cost_nusd: int
    prompt_tokens: int
    completion_tokens: int
    label: str | None = None  # the user's email or name, for group=user


@dataclass(frozen=True, slots=True)
class TrafficPoint:
    bucket: str  # YYYY-MM-DDTHH:00 (hour) or YYYY-MM-DD (day), UTC
    requests: int
    errors: int
    cost_nusd: int


def percentile_cont(ordered: Sequence[float], p: float) -> float | None:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    if not ordered:
        return None
    position = p * (len(ordered) - 1)
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(ordered[low])
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _utc(moment: datetime) -> datetime:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC)


def _bounds(session: AsyncSession, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    start, end = _utc(start), _utc(end)
    if _dialect(session) == "sqlite":
        # SQLite stores naive UTC text; compare like with like.
        return start.replace(tzinfo=None), end.replace(tzinfo=None)
    return start, end


def _in_range(session: AsyncSession, start: datetime, end: datetime) -> ColumnElement[bool]:
    low, high = _bounds(session, start, end)
    return and_(UsageRecord.created_at >= low, UsageRecord.created_at < high)


# --- provider statistics ----------------------------------------------------------------


async def provider_stats(
    session: AsyncSession,
    start: datetime,
    end: datetime,
    *,
    limit: int = DEFAULT_ROW_LIMIT,
) -> list[ProviderStats]:
    """Per provider and model: calls, success rate, latency/TTFT percentiles, tokens/s."""
    if _dialect(session) == "postgresql":
        stats = await _provider_stats_pg(session, start, end)
    else:
        stats = await _provider_stats_rows(session, start, end, limit)
    return sorted(stats.values(), key=lambda s: (s.provider or "", s.model or ""))


async def _provider_stats_pg(
    session: AsyncSession, start: datetime, end: datetime
) -> dict[tuple[str | None, str | None], ProviderStats]:
    ok = UsageRecord.status == "ok"

    def pct(column: Any, p: float, *conditions: ColumnElement[bool]) -> Any:
        return func.percentile_cont(p).within_group(column).filter(and_(ok, *conditions))

    duration, ttfc, tps = UsageRecord.duration_ms, UsageRecord.ttfc_ms, UsageRecord.tokens_per_second
    stmt = (
        select(
            UsageRecord.provider,
            UsageRecord.model_served,
            func.count(),
            func.count().filter(ok),
            *(pct(duration, p) for p in PERCENTILES),
            *(pct(ttfc, p, ttfc.is_not(None)) for p in PERCENTILES),
            pct(tps, 0.5, tps.is_not(None)),
            func.avg(tps).filter(ok),
        )
        .where(_in_range(session, start, end))
        .group_by(UsageRecord.provider, UsageRecord.model_served)
    )
    result: dict[tuple[str | None, str | None], ProviderStats] = {}
    for row in await session.execute(stmt):
        provider, model, requests, requests_ok = row[0], row[1], row[2], row[3]
        result[(provider, model)] = ProviderStats(
            provider=provider,
            model=model,
            requests=int(requests),
            requests_ok=int(requests_ok),
            latency_ms=Percentiles(*_floats(row[4:7])),
            ttft_ms=Percentiles(*_floats(row[7:10])),
            tokens_per_second_p50=_float(row[10]),
            tokens_per_second_avg=_float(row[11]),
        )
    low, high = _bounds(session, start, end)
    attempts = await session.execute(
        text(
            "SELECT a->>'provider', a->>'model', a->>'outcome', count(*) "
            "FROM usage_records, json_array_elements(attempts_detail) AS a "
            "WHERE created_at >= :low AND created_at < :high AND attempts_detail IS NOT NULL "
            "GROUP BY 1, 2, 3"
        ),
        {"low": low, "high": high},
    )
    for provider, model, outcome, count in attempts:
        _add_attempts(result, provider, model, outcome, int(count))
    return result


async def _provider_stats_rows(
    session: AsyncSession, start: datetime, end: datetime, limit: int
) -> dict[tuple[str | None, str | None], ProviderStats]:
    stmt = (
        select(
            UsageRecord.provider,
            UsageRecord.model_served,
            UsageRecord.status,
            UsageRecord.duration_ms,
            UsageRecord.ttfc_ms,
            UsageRecord.tokens_per_second,
            UsageRecord.attempts_detail,
        )
        .where(_in_range(session, start, end))
        .order_by(UsageRecord.id.desc())
        .limit(limit)
    )
    result: dict[tuple[str | None, str | None], ProviderStats] = {}
    samples: dict[tuple[str | None, str | None], tuple[list[float], list[float], list[float]]]
    samples = defaultdict(lambda: ([], [], []))
    for provider, model, status, duration, ttfc, tps, attempts in await session.execute(stmt):
        stats = result.get((provider, model))
        if stats is None:
            stats = result[(provider, model)] = ProviderStats(provider=provider, model=model)
        stats.requests += 1
        if status == "ok":
            stats.requests_ok += 1
            durations, ttfcs, rates = samples[(provider, model)]
            durations.append(duration)
            if ttfc is not None:
                ttfcs.append(ttfc)
            if tps is not None:
                rates.append(tps)
        detail: list[dict[str, Any]] = attempts or []
        for attempt in detail:
            _add_attempts(
                result, attempt.get("provider"), attempt.get("model"), attempt.get("outcome"), 1
            )
    for key, (durations, ttfcs, rates) in samples.items():
        stats = result[key]
        stats.latency_ms = Percentiles.of(durations)
        stats.ttft_ms = Percentiles.of(ttfcs)
        stats.tokens_per_second_p50 = percentile_cont(sorted(rates), 0.5)
        stats.tokens_per_second_avg = sum(rates) / len(rates) if rates else None
    return result


def _add_attempts(
    result: dict[tuple[str | None, str | None], ProviderStats],
    provider: str | None,
    model: str | None,
    outcome: str | None,
    count: int,
) -> None:
    stats = result.get((provider, model))
    if stats is None:
        stats = result[(provider, model)] = ProviderStats(provider=provider, model=model)
    stats.attempts += count
    if outcome == "ok":
        stats.successes += count
    elif outcome == "technical":
        stats.technical_errors += count
    elif outcome == "business":
        stats.business_errors += count


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _floats(values: Iterable[Any]) -> list[float | None]:
    return [_float(v) for v in values]


# --- spend and traffic ------------------------------------------------------------------


def _day(session: AsyncSession) -> Any:
    if _dialect(session) == "postgresql":
        return func.to_char(func.timezone("UTC", UsageRecord.created_at), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", UsageRecord.created_at)


def _hour(session: AsyncSession) -> Any:
    if _dialect(session) == "postgresql":
        return func.to_char(func.timezone("UTC", UsageRecord.created_at), 'YYYY-MM-DD"T"HH24:00')
    return func.strftime("%Y-%m-%dT%H:00", UsageRecord.created_at)


async def spend(
    session: AsyncSession,
    start: datetime,
    end: datetime,
    *,
    group: SpendGroup,
    limit: int = 1000,
) -> list[SpendRow]:
    """Requests, cost and tokens per user, model or UTC day; biggest spend first
    (chronological for days)."""
    key: Any
    if group is SpendGroup.USER:
        key = UsageRecord.user_id
    elif group is SpendGroup.MODEL:
        key = UsageRecord.model_requested
    else:
        key = _day(session)
    cost = func.coalesce(func.sum(UsageRecord.cost_nusd), 0)
    stmt = (
        select(
            key.label("key"),
            func.count(),
            cost,
            func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
            func.coalesce(func.sum(UsageRecord.completion_tokens), 0),
        )
        .where(_in_range(session, start, end))
        .group_by(key)
        .order_by(key.asc() if group is SpendGroup.DAY else cost.desc())
        .limit(limit)
    )
    rows = [
        SpendRow(str(k), int(n), int(c), int(p), int(o)) for k, n, c, p, o in await session.execute(stmt)
    ]
    if group is SpendGroup.USER and rows:
        labels = dict(
            (
                await session.execute(
                    select(User.id, func.coalesce(User.email, User.name)).where(
                        User.id.in_([r.key for r in rows])
                    )
                )
            ).all()
        )
        rows = [
            SpendRow(r.key, r.requests, r.cost_nusd, r.prompt_tokens, r.completion_tokens, labels.get(r.key))
            for r in rows
        ]
    return rows


async def traffic(
    session: AsyncSession, start: datetime, end: datetime, *, bucket: Bucket = Bucket.HOUR
) -> list[TrafficPoint]:
    """Requests, errors and cost per hour or day (UTC), oldest first; empty buckets omitted."""
    key = _hour(session) if bucket is Bucket.HOUR else _day(session)
    stmt = (
        select(
            key.label("bucket"),
            func.count(),
            func.count().filter(UsageRecord.status == "error"),
            func.coalesce(func.sum(UsageRecord.cost_nusd), 0),
        )
        .where(_in_range(session, start, end))
        .group_by(key)
        .order_by(key.asc())
    )
    return [TrafficPoint(str(b), int(n), int(e), int(c)) for b, n, e, c in await session.execute(stmt)]


async def recent_errors(
    session: AsyncSession, start: datetime, end: datetime, *, limit: int = 20
) -> list[UsageRecord]:
    """The newest requests that failed, or that succeeded only after a provider failed."""
    stmt = (
        select(UsageRecord)
        .where(
            _in_range(session, start, end),
            or_(UsageRecord.status == "error", UsageRecord.attempts > 1),
        )
        .order_by(UsageRecord.id.desc())
        .limit(limit)
    )
    return list((await session.scalars(stmt)).all())
