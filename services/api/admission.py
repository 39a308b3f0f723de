"""Admission: rate limits, spend cap, fund hold and enqueue, in one Redis round trip.

The hold is the most the request can cost: its prompt (estimated) and its largest
possible output at the dearest provider that may serve it. Billing later replaces the
hold with the real debit. When the balance is not cached, it is read from the database
once and cached (guarded by a version, see `shared/redis/funds.py`), then admission is
retried; a key's monthly spend counter is filled the same way from its usage rows.

Rate limits (GCRA, see `shared/redis/lua/admit.lua`) are per key, or per user for
session tokens: `RATE_LIMIT_REQUESTS_PER_MINUTE` unless the key has its own, plus
`RATE_LIMIT_TOKENS_PER_MINUTE` (prompt estimate + most output) when set. They live in
Redis, so every api replica draws from the same allowance.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import structlog
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.auth import Principal
from services.api.validation import ChatBody
from shared.catalog import Model
from shared.db.repositories.api_keys import key_spend_since
from shared.db.repositories.ledger import get_balance
from shared.errors import (
    ClientError,
    InsufficientFunds,
    RateLimited,
    ServiceUnavailable,
)
from shared.messages import CompletionEvent, Job, Outcome, Usage
from shared.money import format_usd
from shared.redis import keys
from shared.redis.funds import AdmitResult, AdmitStatus, Funds, RateState, utc_month
from shared.settings import Settings
from shared.tokens import estimate_prompt_tokens

log = structlog.get_logger("api.admission")

# A hold outlives its request's deadline by this much before cleanup may expire it.
HOLD_GRACE_MS = 10 * 60_000
_FILL_ATTEMPTS = 3
# The events stream field the worker writes a CompletionEvent into (billing reads it).
_EVENT_FIELD = "e"


class SpendLimitReached(ClientError):
    """The API key's monthly spend cap would be exceeded."""

    status = 403
    type = "insufficient_quota"
    default_code = "key_spend_limit_reached"


@dataclass(frozen=True, slots=True)
class RateInfo:
    """Where the caller stands after this request: becomes the x-ratelimit-* headers."""

    limit: int
    remaining: int
    reset_s: float
    token_limit: int = 0
    token_remaining: int = 0
    token_reset_s: float = 0.0

    def headers(self) -> dict[str, str]:
        headers = {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(max(self.remaining, 0)),
            "x-ratelimit-reset-requests": f"{self.reset_s:.3f}s",
        }
        if self.token_limit:
            headers["x-ratelimit-limit-tokens"] = str(self.token_limit)
            headers["x-ratelimit-remaining-tokens"] = str(max(self.token_remaining, 0))
            headers["x-ratelimit-reset-tokens"] = f"{self.token_reset_s:.3f}s"
        return headers


@dataclass(frozen=True, slots=True)
class Admitted:
    job: Job
    rate: RateInfo

    @property
    def rate_limit(self) -> int:
        return self.rate.limit

    @property
    def rate_remaining(self) -> int:
        return self.rate.remaining

    @property
    def rate_reset_s(self) -> float:
        return self.rate.reset_s


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A stored non-streaming answer (see `response_cache.py`)."""

    body: bytes
    cost_nusd: int
    provider: str | None
    model_served: str | None
    usage: Usage


def max_cost_nusd(model: Model, body: ChatBody) -> int:
    """The most this request can cost at any provider that may serve it."""
    prompt_tokens = estimate_prompt_tokens(body.messages)
    worst = 0
    for offer in model.offers:
        max_out = min(body.max_output_tokens or offer.max_output_tokens, offer.max_output_tokens)
        worst = max(worst, offer.price.cost_nusd(prompt_tokens, max_out * body.n))
    return worst


def max_tokens(model: Model, body: ChatBody) -> int:
    """The most tokens this request can use: prompt estimate plus the largest output."""
    most_out = max(
        (min(body.max_output_tokens or o.max_output_tokens, o.max_output_tokens) for o in model.offers),
        default=body.max_output_tokens or 0,
    )
    return estimate_prompt_tokens(body.messages) + most_out * body.n


def cached_price_nusd(cost_nusd: int, fraction: Decimal) -> int:
    """What a response-cache hit is billed: a fraction of the original cost, half-up."""
    return int((Decimal(cost_nusd) * fraction).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class Admission:
    def __init__(
        self,
        settings: Settings,
        funds: Funds,
        sessions: async_sessionmaker[AsyncSession],
    ) -> None:
        self._settings = settings
        self._funds = funds
        self._sessions = sessions

    def _rpm(self, principal: Principal) -> int:
        return max(principal.rate_limit_rpm or self._settings.rate_limit_requests_per_minute, 1)

    async def admit(
        self,
        principal: Principal,
        model: Model,
        body: ChatBody,
        raw: bytes,
        request_id: str,
        *,
        routing: dict[str, Any] | None = None,
    ) -> Admitted:
        now = time.time_ns() // 1_000_000
        hold = max_cost_nusd(model, body)
        job = Job(
            request_id=request_id,
            user_id=principal.user_id,
            key_id=principal.key_id,
            reply_to=self._settings.process_id,
            model=body.model,
            stream=body.stream,
            include_usage=body.include_usage,
            deadline_ms=now + int(self._settings.request_timeout_s * 1000),
            enqueued_ms=now,
            hold_nusd=hold,
            body=raw,
            routing=routing,
        )
        token_cost = max_tokens(model, body) if self._settings.rate_limit_tokens_per_minute else 0
        rate = await self._admit(
            principal,
            request_id=request_id,
            hold=hold,
            entry=list(job.to_fields().items()),
            stream=keys.JOBS_STREAM,
            maxlen=keys.JOBS_STREAM_MAXLEN,
            token_cost=token_cost,
            hold_expires_ms=job.deadline_ms + HOLD_GRACE_MS,
        )
        return Admitted(job, rate)

    async def admit_cached(
        self, principal: Principal, requested_model: str, answer: CachedAnswer, request_id: str
    ) -> tuple[RateInfo, int]:
        """Admit a response-cache hit: the same limits and checks as any request, but
        instead of a job, its completion event goes straight to billing, which records
        a usage row (provider `cache`) and debits the cached price. Returns the rate
        state and the price charged."""
        now = time.time_ns() // 1_000_000
        price = cached_price_nusd(answer.cost_nusd, self._settings.response_cache_price_fraction)
        event = CompletionEvent(
            request_id=request_id,
            user_id=principal.user_id,
            key_id=principal.key_id,
            model_requested=requested_model,
            model_served=answer.model_served,
            provider="cache",
            outcome=Outcome.OK,
            stream=False,
            usage=answer.usage,
            usage_estimated=False,
            cost_nusd=price,
            hold_nusd=price,
            http_status=200,
            finished_ms=now,
        )
        rate = await self._admit(
            principal,
            request_id=request_id,
            hold=price,
            entry=[(_EVENT_FIELD, event.encode())],
            stream=keys.EVENTS_STREAM,
            maxlen=keys.EVENTS_STREAM_MAXLEN,
            token_cost=answer.usage.total_tokens,
            hold_expires_ms=now + HOLD_GRACE_MS,
        )
        return rate, price

    async def rate_state(self, principal: Principal) -> RateInfo | None:
        """The caller's rate state without taking from it (for refused requests); None if
        Redis cannot say."""
        rpm, tpm = self._rpm(principal), self._settings.rate_limit_tokens_per_minute
        try:
            requests, tokens = await self._funds.peek_rate(principal.rate_subject, rpm, tpm)
        except RedisError:
            return None
        return self._info(principal, requests, tokens)

    def _info(self, principal: Principal, requests: RateState, tokens: RateState) -> RateInfo:
        return RateInfo(
            limit=self._rpm(principal),
            remaining=requests.remaining,
            reset_s=requests.reset_us / 1e6,
            token_limit=self._settings.rate_limit_tokens_per_minute,
            token_remaining=tokens.remaining,
            token_reset_s=tokens.reset_us / 1e6,
        )

    async def _admit(
        self,
        principal: Principal,
        *,
        request_id: str,
        hold: int,
        entry: list[tuple[str, bytes]],
        stream: str,
        maxlen: int,
        token_cost: int,
        hold_expires_ms: int,
    ) -> RateInfo:
        rpm = self._rpm(principal)
        tpm = self._settings.rate_limit_tokens_per_minute
        capped = principal.key_id is not None and principal.monthly_spend_limit_nusd is not None
        month = utc_month()
        for _ in range(_FILL_ATTEMPTS):
            try:
                result = await self._funds.admit(
                    user_id=principal.user_id,
                    rate_subject=principal.rate_subject,
                    rate_limit=rpm,
                    request_id=request_id,
                    hold_nusd=hold,
                    minimal_fund_nusd=self._settings.minimal_fund_nusd,
                    hold_expires_ms=hold_expires_ms,
                    entry=entry,
                    stream=stream,
                    stream_maxlen=maxlen,
                    token_limit=tpm,
                    token_cost=token_cost,
                    key_id=principal.key_id,
                    spend_limit_nusd=principal.monthly_spend_limit_nusd if capped else None,
                    month=month,
                )
            except RedisError as exc:
                log.error("admission_redis_error", error=type(exc).__name__)
                raise ServiceUnavailable("The gateway's queue is unavailable; retry shortly.") from exc
            if result.status is AdmitStatus.NEED_BALANCE:
                await self._fill_balance(principal.user_id)
                continue
            if result.status is AdmitStatus.NEED_KEY_SPEND:
                await self._fill_key_spend(principal, month)
                continue
            rate = self._info(principal, result.requests, result.tokens)
            if result.status is AdmitStatus.OK:
                return rate
            raise self._refusal(principal, result, rate, hold)
        raise ServiceUnavailable("The balance cache could not be filled; retry shortly.")

    def _refusal(
        self, principal: Principal, result: AdmitResult, rate: RateInfo, hold: int
    ) -> ClientError:
        headers = rate.headers()
        if result.status in (AdmitStatus.RATE_LIMITED, AdmitStatus.TOKEN_RATE_LIMITED):
            by_tokens = result.status is AdmitStatus.TOKEN_RATE_LIMITED
            state = result.tokens if by_tokens else result.requests
            retry_ms = max(math.ceil(state.retry_us / 1000), 1)
            retry_s = max(math.ceil(retry_ms / 1000), 1)
            what = (
                f"{rate.token_limit} tokens per minute" if by_tokens else f"{rate.limit} requests per minute"
            )
            headers.update({"retry-after": str(retry_s), "retry-after-ms": str(retry_ms)})
            if by_tokens:
                headers["x-ratelimit-remaining-tokens"] = "0"
            else:
                headers["x-ratelimit-remaining-requests"] = "0"
            return RateLimited(
                f"Rate limit reached: {what}. Retry in {retry_s} s.",
                code="rate_limit_exceeded",
                headers=headers,
            )
        if result.status is AdmitStatus.SPEND_LIMIT:
            limit = principal.monthly_spend_limit_nusd or 0
            return SpendLimitReached(
                f"This API key's monthly spend limit of ${format_usd(limit)} would be exceeded: "
                f"${format_usd(max(result.value, 0))} is left this month and this request may "
                f"cost up to ${format_usd(hold)}.",
                headers=headers,
            )
        return InsufficientFunds(
            "Insufficient funds: available balance "
            f"${format_usd(result.value)} is below this request's maximum cost "
            f"${format_usd(hold)} or the minimal fund "
            f"${format_usd(self._settings.minimal_fund_nusd)}. Credit the wallet to continue.",
            headers=headers,
        )

    async def _fill_balance(self, user_id: str) -> None:
        try:
            version = await self._funds.balance_version(user_id)
            async with self._sessions() as session:
                balance = await get_balance(session, user_id)
            await self._funds.fill_balance(
                user_id, balance or 0, version, self._settings.balance_cache_ttl_s
            )
        except RedisError as exc:
            raise ServiceUnavailable("The gateway's cache is unavailable; retry shortly.") from exc
        except Exception as exc:
            log.error("balance_read_failed", error=type(exc).__name__)
            raise ServiceUnavailable("Balances are temporarily unavailable.") from exc

    async def _fill_key_spend(self, principal: Principal, month: str) -> None:
        """Count what the key spent this month from the usage rows, into Redis."""
        assert principal.key_id is not None
        since = _month_start(datetime.now(UTC))
        if f"{since:%Y%m}" != month:  # the month turned meanwhile: the next try refills
            return
        try:
            version = await self._funds.balance_version(principal.user_id)
            async with self._sessions() as session:
                spent = await key_spend_since(session, principal.user_id, principal.key_id, since)
            await self._funds.fill_key_spend(
                principal.user_id, principal.key_id, month, spent, version, self._settings.cache_ttl_s
            )
        except RedisError as exc:
            raise ServiceUnavailable("The gateway's cache is unavailable; retry shortly.") from exc
        except Exception as exc:
            log.error("key_spend_read_failed", error=type(exc).__name__)
            raise ServiceUnavailable("Spend limits are temporarily unavailable.") from exc


def new_request_id() -> str:
    return uuid.uuid4().hex


__all__ = [
    "Admission", "Admitted", "CachedAnswer", "RateInfo", "SpendLimitReached", "cached_price_nusd",
    "max_cost_nusd", "max_tokens", "new_request_id",
]  # fmt: skip
