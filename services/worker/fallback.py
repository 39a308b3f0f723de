"""Try candidates in order until one succeeds.

Technical failures (`RetryableProviderError`) move to the next candidate while nothing
has reached the client; business failures (`FinalProviderError`) end the request at
once. Every try is recorded as an `Attempt` for the completion event.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from services.worker.providers.base import Target
from shared.errors import FinalProviderError, ProviderError, RetryableProviderError
from shared.messages import Attempt

log = structlog.get_logger("worker.fallback")


async def first_success(
    targets: Sequence[Target],
    call: Callable[[Target], Awaitable[None]],
    *,
    attempts: list[Attempt],
    can_fall_back: Callable[[], bool],
) -> None:
    """Run `call` on each target until one returns; raise the error the client should see."""
    failures: list[RetryableProviderError] = []
    for target in targets:
        started = time.monotonic()
        try:
            await call(target)
        except RetryableProviderError as exc:
            attempts.append(_attempt(target, "technical", exc, started))
            log.warning(
                "provider_failed",
                provider=target.name,
                model=target.model_id,
                error_class="technical",
                status=exc.upstream_status,
                code=exc.code,
            )
            failures.append(exc)
            if not can_fall_back():
                raise
            continue
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
        return
    raise exhausted(failures)


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


def _attempt(target: Target, outcome: str, exc: ProviderError, started: float) -> Attempt:
    return Attempt(
        provider=target.name,
        model=target.model_id,
        outcome=outcome,
        status=exc.upstream_status,
        error_code=exc.code,
        latency_ms=_elapsed_ms(started),
    )


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
