"""Usage reports for operators, as JSON-ready dicts: one shape for the admin API, the
dashboard and `gateway usage ...`.

Time ranges are given as ISO 8601 (`2026-11-27T10:00:00Z`, `2026-11-27`); a bare date
means its midnight UTC and a naive time is UTC. By default the last 24 hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.repositories import stats
from shared.money import format_usd

DEFAULT_WINDOW = timedelta(hours=24)
MAX_WINDOW = timedelta(days=366)


class RangeError(ValueError):
    """A bad `from`/`to`; `param` names the offending one."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: datetime
    end: datetime

    @classmethod
    def parse(
        cls, raw_from: str | None, raw_to: str | None, *, now: datetime | None = None
    ) -> TimeRange:
        """From query or command-line values; raises RangeError."""
        end = _moment(raw_to, "to") if raw_to else (now or datetime.now(UTC))
        start = _moment(raw_from, "from") if raw_from else end - DEFAULT_WINDOW
        if start >= end:
            raise RangeError("'from' must be before 'to'.", "from")
        if end - start > MAX_WINDOW:
            raise RangeError("The range may span at most 366 days.", "from")
        return cls(start, end)

    def to_dict(self) -> dict[str, str]:
        return {"from": _iso(self.start), "to": _iso(self.end)}


def _moment(raw: str, param: str) -> datetime:
    value = raw.strip()
    if "T" in value and " " in value:
        value = value.replace(" ", "+")  # a "+01:00" offset decoded as a space in a URL
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise RangeError(
            f"'{param}' must be an ISO 8601 date or time, e.g. 2026-11-27 or 2026-11-27T10:00:00Z.",
            param,
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _money(nusd: int) -> dict[str, Any]:
    return {"cost_nusd": nusd, "cost_usd": format_usd(nusd)}


async def providers_report(session: AsyncSession, window: TimeRange) -> dict[str, Any]:
    rows = await stats.provider_stats(session, window.start, window.end)
    return {**window.to_dict(), "providers": [row.to_dict() for row in rows]}


async def spend_report(
    session: AsyncSession, window: TimeRange, group: stats.SpendGroup, *, limit: int = 1000
) -> dict[str, Any]:
    rows = await stats.spend(session, window.start, window.end, group=group, limit=limit)
    items = [
        {
            group.value: row.key,
            **({"label": row.label} if group is stats.SpendGroup.USER else {}),
            "requests": row.requests,
            **_money(row.cost_nusd),
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
        }
        for row in rows
    ]
    total = sum(row.cost_nusd for row in rows)
    return {
        **window.to_dict(),
        "group": group.value,
        "rows": items,
        "total": {"requests": sum(row.requests for row in rows), **_money(total)},
    }


async def traffic_report(
    session: AsyncSession, window: TimeRange, bucket: stats.Bucket
) -> dict[str, Any]:
    points = await stats.traffic(session, window.start, window.end, bucket=bucket)
    return {
        **window.to_dict(),
        "bucket": bucket.value,
        "points": [
            {"bucket": p.bucket, "requests": p.requests, "errors": p.errors, **_money(p.cost_nusd)}
            for p in points
        ],
    }


async def errors_report(session: AsyncSession, window: TimeRange, *, limit: int = 20) -> dict[str, Any]:
    rows = await stats.recent_errors(session, window.start, window.end, limit=limit)
    return {
        **window.to_dict(),
        "errors": [
            {
                "request_id": row.request_id,
                "at": _iso(row.created_at.replace(tzinfo=row.created_at.tzinfo or UTC)),
                "user_id": row.user_id,
                "model": row.model_requested,
                "provider": row.provider,
                "status": row.status,
                "http_status": row.http_status,
                "error_code": row.error_code,
                "error_class": row.error_class,
                "attempts": row.attempts_detail or [],
            }
            for row in rows
        ],
    }
