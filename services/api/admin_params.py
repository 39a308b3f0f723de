"""Parsing what admin and account requests send: JSON bodies, exact USD amounts, date
ranges, page sizes and cursors. Every failure is an `InvalidRequest` naming its param,
so a bad value is a 400 in OpenAI's error format and changes nothing."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
import structlog
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from shared.errors import InvalidRequest, ServiceUnavailable
from shared.money import usd_to_nusd

log = structlog.get_logger("api.admin")

MAX_PAGE = 1000


async def json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object (an empty body is an empty object)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def optional_str(body: dict[str, Any], name: str, max_len: int = 255) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidRequest(
            f"'{name}' must be a string of at most {max_len} characters.", param=name
        )
    return value.strip() or None


def amount_nusd(body: dict[str, Any], *, allow_negative: bool = False) -> int:
    """`amount` as a decimal USD string ("10", "-0.25") or `amount_nusd` as an integer.

    JSON numbers with a fraction are refused: they are binary floats by the time any
    parser hands them over, and money must stay exact.
    """
    if "amount_nusd" in body:
        value = body["amount_nusd"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest("'amount_nusd' must be an integer.", param="amount_nusd")
        nusd = value
        param = "amount_nusd"
    else:
        raw = body.get("amount")
        param = "amount"
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise InvalidRequest(
                "'amount' is required, as a decimal string of USD (e.g. \"10.50\").", param=param
            )
        try:
            amount = Decimal(str(raw).strip())
            if not amount.is_finite():
                raise InvalidOperation
            nusd = usd_to_nusd(amount)
        except (ArithmeticError, ValueError) as exc:
            raise InvalidRequest(
                f"'amount' must be a decimal number of USD with at most 9 decimals, got {raw!r}.",
                param=param,
            ) from exc
    if nusd == 0 or (nusd < 0 and not allow_negative):
        which = "non-zero" if allow_negative else "positive"
        raise InvalidRequest(f"'{param}' must be {which}.", param=param)
    if abs(nusd) >= 2**62:
        raise InvalidRequest(f"'{param}' is too large.", param=param)
    return nusd


def idempotency_key(request: web.Request, body: dict[str, Any]) -> str:
    """From the body's `idempotency_key` or the `Idempotency-Key` header; required."""
    key = body.get("idempotency_key") or request.headers.get("Idempotency-Key")
    if not isinstance(key, str) or not key.strip() or len(key) > 200:
        raise InvalidRequest(
            "An idempotency key is required (body 'idempotency_key' or header "
            "'Idempotency-Key', at most 200 characters): retrying with the same key "
            "applies the movement once.",
            param="idempotency_key",
        )
    return key.strip()


def when(request: web.Request, name: str, *, end_of_day: bool = False) -> datetime | None:
    """A query parameter as an aware datetime: ISO 8601 date or time, UTC by default.

    A bare date as the end of a range (`to=2025-01-31`) includes that whole day.
    """
    raw = request.query.get(name)
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime.combine(day, time.min, UTC)
            if end_of_day:
                moment = datetime.combine(day.fromordinal(day.toordinal() + 1), time.min, UTC)
            return moment
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidRequest(
            f"'{name}' must be an ISO 8601 date or date-time, got {raw!r}.", param=name
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def date_range(request: web.Request) -> tuple[datetime | None, datetime | None]:
    since, until = when(request, "from"), when(request, "to", end_of_day=True)
    if since is not None and until is not None and since >= until:
        raise InvalidRequest("'from' must be before 'to'.", param="from")
    return since, until


def page_size(request: web.Request, default: int = 50) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PAGE:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {MAX_PAGE}.", param="limit")
    return value


def cursor(request: web.Request) -> int | None:
    """The opaque `cursor` a previous page returned as `next_cursor` (a row id)."""
    raw = request.query.get("cursor")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidRequest("'cursor' must be a value returned as 'next_cursor'.", param="cursor")
    return int(raw)


def csv_list(request: web.Request, name: str, allowed: tuple[str, ...]) -> list[str]:
    values = [v.strip() for v in request.query.get(name, "").split(",") if v.strip()]
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise InvalidRequest(
            f"'{name}' accepts {', '.join(allowed)}; got {unknown[0]!r}.", param=name
        )
    return list(dict.fromkeys(values))


@contextlib.asynccontextmanager
async def database_errors() -> AsyncIterator[None]:
    """A database failure is the gateway's problem (503), never a 500 with a traceback."""
    try:
        yield
    except SQLAlchemyError as exc:
        log.error("database_unavailable", error=type(exc).__name__)
        raise ServiceUnavailable("The database is unavailable; retry shortly.") from exc
