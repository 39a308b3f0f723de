"""Try candidates in order until one succeeds.

- A technical failure (`RetryableProviderError`) moves on to the next candidate at once,
  as long as nothing has reached the client (another provider now beats the same one
  later). The last candidate is retried with jittered backoff or the provider's own
  `Retry-After` / `retryDelay`, when the wait fits the request's deadline.
- A business failure (`FinalProviderError`) ends the request at once.
- Circuit breakers skip providers that keep failing; every try is recorded as an
  `Attempt` for the completion event (which alerts and statistics read).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from services.worker.providers.base import Target
from shared.circuit import Circuits
from shared.errors import FinalProviderError, ProviderError, RetryableProviderError
from shared.messages import Attempt

log = structlog.get_logger("worker.fallback")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 1  # extra tries on the same provider
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 2.0
    # With other candidates left, wait at most this long before retrying the same one
    # (0: never; fall back at once).
    quick_retry_s: float = 0.0
    hint_cap_s: float = 30.0

    def delay_s(self, exc: RetryableProviderError, retry: int) -> float:
        if exc.retry_after_s is not None:
            return min(max(exc.retry_after_s, 0.0), self.hint_cap_s)
        backoff: float = min(self.backoff_base_s * 2**retry, self.backoff_cap_s)
        return backoff * random.uniform(0.5, 1.5)


async def first_success(
    targets: Sequence[Target],
    call: Callable[[Target], Awaitable[None]],
    *,
    attempts: list[Attempt],
    can_fall_back: Callable[[], bool],
    deadline_ms: int,
    circuits: Circuits | None = None,
    retry: RetryPolicy | None = None,
) -> None:
    """Run `call` on targets until one returns; raise the error the client should see."""
    policy = retry or RetryPolicy()
    failures: list[RetryableProviderError] = []
    skipped = 0
    for index, target in enumerate(targets):
        if circuits is not None and not await _allowed(circuits, target):
            skipped += 1
            log.info("provider_skipped", provider=target.name, model=target.model_id, reason="circuit_open")
            continue
        is_last = index == len(targets) - 1
        retries = 0
        while True:
            started = time.monotonic()
            try:
                await call(target)
            except RetryableProviderError as exc:
                opened = await _record_failure(circuits, target)
                attempts.append(_attempt(target, "technical", exc, started, opened=opened))
                log.warning(
                    "provider_failed",
                    provider=target.name,
                    model=target.model_id,
                    error_class="technical",
                    status=exc.upstream_status,
                    code=exc.code,
                    circuit_opened=opened,
                )
                failures.append(exc)
                if not can_fall_back():
                    raise
                delay = policy.delay_s(exc, retries)
                if retries < policy.max_retries and not opened and _fits(
                    delay, deadline_ms, patient=is_last, quick_s=policy.quick_retry_s
                ):
                    retries += 1
                    await asyncio.sleep(delay)
                    continue
                break
            except FinalProviderError as exc:
                attempts.append(_attempt(target, "business", exc, started))
                log.info(
                    "provider_refused",
                    provider=target.name,
                    model=target.model_id,
                    error_class="business",
                    status=exc.upstream_status,
                    code=exc.code,
                )
                raise
            attempts.append(
                Attempt(
                    provider=target.name,
                    model=target.model_id,
                    outcome="ok",
                    status=200,
                    latency_ms=_elapsed_ms(started),
                )
            )
            if circuits is not None:
                await _record_success(circuits, target)
            return
    if skipped and not failures:
        raise RetryableProviderError(
            "Every provider for this model is temporarily disabled after repeated failures; "
            "retry shortly.",
            status=503,
            code="providers_unavailable",
            headers={"retry-after": "5"},
        )
    raise exhausted(failures)


def _fits(delay_s: float, deadline_ms: int, *, patient: bool, quick_s: float) -> bool:
    remaining_s = deadline_ms / 1000 - time.time()
    if delay_s > remaining_s - 1.0:
        return False
    return patient or delay_s <= quick_s


async def _allowed(circuits: Circuits, target: Target) -> bool:
    try:
        return await circuits.allow(target.name, target.model_id)
    except Exception:  # noqa: BLE001 - Redis trouble must not stop the call itself
        log.warning("circuit_check_failed", provider=target.name, exc_info=True)
        return True


async def _record_failure(circuits: Circuits | None, target: Target) -> bool:
    if circuits is None:
        return False
    try:
        return await circuits.record_failure(target.name, target.model_id)
    except Exception:  # noqa: BLE001
        log.warning("circuit_record_failed", provider=target.name, exc_info=True)
        return False


async def _record_success(circuits: Circuits, target: Target) -> None:
    try:
        if await circuits.record_success(target.name, target.model_id):
            log.info("circuit_closed", provider=target.name, model=target.model_id)
    except Exception:  # noqa: BLE001
        log.warning("circuit_record_failed", provider=target.name, exc_info=True)


def exhausted(failures: Sequence[RetryableProviderError]) -> ProviderError:
    """The error for a request every candidate failed, shaped by the last failure."""
    if not failures:
        return RetryableProviderError("No provider could serve this request.", status=503)
    last = failures[-1]
    if last.upstream_status == 429:
        retry_after = max(int(last.retry_after_s or 1), 1)
        return RetryableProviderError(
            "All providers for this model are rate limited; retry later.",
            provider=last.provider,
            upstream_status=429,
            status=429,
            error_type="requests",
            code="rate_limit_exceeded",
            headers={"retry-after": str(retry_after)},
            retry_after_s=retry_after,
        )
    if last.code == "timeout":
        return RetryableProviderError(
            "The provider did not answer in time.",
            provider=last.provider,
            status=504,
            code="timeout",
        )
    return RetryableProviderError(
        f"The provider failed: {last.message}",
        provider=last.provider,
        upstream_status=last.upstream_status,
        status=502,
        code="upstream_error",
    )


def _attempt(
    target: Target, outcome: str, exc: ProviderError, started: float, *, opened: bool = False
) -> Attempt:
    return Attempt(
        provider=target.name,
        model=target.model_id,
        outcome=outcome,
        status=exc.upstream_status,
        error_code=exc.code,
        latency_ms=_elapsed_ms(started),
        circuit_opened=opened,
    )


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
