"""Admission: rate limit, fund hold and enqueue, in one Redis round trip.

The hold is the most the request can cost: its prompt (estimated) and its largest
possible output at the dearest provider that may serve it. Billing later replaces the
hold with the real debit. When the balance is not cached, it is read from the database
once and cached (guarded by a version, see `shared/redis/funds.py`), then admission is
retried.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import structlog
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.auth import Principal
from services.api.validation import ChatBody
from shared.catalog import Model
from shared.db.repositories.ledger import get_balance
from shared.errors import InsufficientFunds, RateLimited, ServiceUnavailable
from shared.messages import Job
from shared.money import format_usd
from shared.redis.funds import AdmitStatus, Funds
from shared.settings import Settings
from shared.tokens import estimate_prompt_tokens

log = structlog.get_logger("api.admission")

RATE_WINDOW_MS = 60_000
# A hold outlives its request's deadline by this much before cleanup may expire it.
HOLD_GRACE_MS = 10 * 60_000
_FILL_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Admitted:
    job: Job
    rate_limit: int
    rate_remaining: int
    rate_reset_s: float


def max_cost_nusd(model: Model, body: ChatBody) -> int:
    """The most this request can cost at any provider that may serve it."""
    prompt_tokens = estimate_prompt_tokens(body.messages)
    worst = 0
    for offer in model.offers:
        max_out = min(body.max_output_tokens or offer.max_output_tokens, offer.max_output_tokens)
        worst = max(worst, offer.price.cost_nusd(prompt_tokens, max_out * body.n))
    return worst


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

    async def admit(
        self, principal: Principal, model: Model, body: ChatBody, raw: bytes, request_id: str
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
        )
        limit = self._settings.rate_limit_requests_per_minute
        window = now // RATE_WINDOW_MS
        reset_s = ((window + 1) * RATE_WINDOW_MS - now) / 1000
        for _ in range(_FILL_ATTEMPTS):
            try:
                result = await self._funds.admit(
                    user_id=principal.user_id,
                    rate_subject=principal.rate_subject,
                    rate_window=window,
                    rate_limit=limit,
                    rate_window_ttl_ms=RATE_WINDOW_MS + 1000,
                    request_id=request_id,
                    hold_nusd=hold,
                    minimal_fund_nusd=self._settings.minimal_fund_nusd,
                    hold_expires_ms=job.deadline_ms + HOLD_GRACE_MS,
                    job_meta=job.encode_meta(),
                    job_body=raw,
                )
            except RedisError as exc:
                log.error("admission_redis_error", error=type(exc).__name__)
                raise ServiceUnavailable("The gateway's queue is unavailable; retry shortly.") from exc
            if result.status is AdmitStatus.OK:
                return Admitted(job, limit, result.value, reset_s)
            if result.status is AdmitStatus.RATE_LIMITED:
                retry_after = max(int(reset_s + 0.999), 1)
                raise RateLimited(
                    f"Rate limit reached: {limit} requests per minute. Retry in {retry_after} s.",
                    headers={
                        "retry-after": str(retry_after),
                        "x-ratelimit-limit-requests": str(limit),
                        "x-ratelimit-remaining-requests": "0",
                        "x-ratelimit-reset-requests": f"{reset_s:.3f}s",
                    },
                )
            if result.status is AdmitStatus.INSUFFICIENT_FUNDS:
                raise InsufficientFunds(
                    "Insufficient funds: available balance "
                    f"${format_usd(result.value)} is below this request's maximum cost "
                    f"${format_usd(hold)} or the minimal fund "
                    f"${format_usd(self._settings.minimal_fund_nusd)}. Credit the wallet to continue.",
                )
            await self._fill_balance(principal.user_id)
        raise ServiceUnavailable("The balance cache could not be filled; retry shortly.")

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


def new_request_id() -> str:
    return uuid.uuid4().hex
