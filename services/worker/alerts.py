"""Alerts about technical provider failures, throttled, sent through arq.

- One alert per provider and error class per window (default 5 minutes), deduplicated
  across every worker by arq's job id (which names the window).
- High priority, also once per window: a circuit that opened, and a request for which
  every candidate failed.
- No alerts for business errors (they are the client's, not the operator's).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from shared.alerts import SEND_JOB, Alert
from shared.messages import CompletionEvent, Outcome
from shared.settings import Settings

if TYPE_CHECKING:
    from arq.connections import ArqRedis

log = structlog.get_logger("worker.alerts")

WINDOW_S = 300


class AlertSender:
    def __init__(self, arq: ArqRedis | None, ntfy_url: str, *, window_s: int = WINDOW_S) -> None:
        self._arq = arq
        self._url = ntfy_url
        self._window_s = window_s
        self._sent: dict[str, float] = {}  # dedupe key -> window start; cheap local guard
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def create(cls, settings: Settings, redis_url: str) -> AlertSender:
        if not settings.ntfy_error_url:
            return cls(None, "")
        from shared.arq_pool import create_arq_pool

        return cls(await create_arq_pool(redis_url), settings.ntfy_error_url)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._arq is not None:
            await self._arq.aclose()

    def after_job(self, event: CompletionEvent) -> None:
        """Look at a finished job's attempts and raise the alerts they call for."""
        technical = [a for a in event.attempts if a.outcome == "technical"]
        for attempt in technical:
            self._raise(
                f"{attempt.provider}:{attempt.error_code or attempt.status}",
                Alert(
                    title=f"Provider {attempt.provider} failing ({attempt.error_code or attempt.status})",
                    message=(
                        f"provider={attempt.provider} model={attempt.model} error_class=technical "
                        f"status={attempt.status} code={attempt.error_code} "
                        f"request_id={event.request_id}"
                    ),
                    priority=3,
                    tags=("warning", "provider_error"),
                ),
            )
            if attempt.circuit_opened:
                self._raise(
                    f"circuit:{attempt.provider}:{attempt.model}",
                    Alert(
                        title=f"Circuit opened: {attempt.provider} / {attempt.model}",
                        message=(
                            f"provider={attempt.provider} model={attempt.model} stopped taking "
                            f"requests after repeated technical failures "
                            f"(last status={attempt.status} code={attempt.error_code}); "
                            f"request_id={event.request_id}"
                        ),
                        priority=5,
                        tags=("rotating_light", "circuit_open"),
                    ),
                )
        if event.outcome is Outcome.ERROR and event.error_class == "technical" and technical:
            self._raise(
                f"all_failed:{event.model_requested}",
                Alert(
                    title=f"All providers failed for {event.model_requested}",
                    message=(
                        f"model={event.model_requested} attempts="
                        + ",".join(f"{a.provider}:{a.status or a.error_code}" for a in technical)
                        + f" request_id={event.request_id}"
                    ),
                    priority=5,
                    tags=("rotating_light", "all_providers_failed"),
                ),
            )

    def _raise(self, key: str, alert: Alert) -> None:
        window = int(time.time() // self._window_s)
        if self._sent.get(key) == window:
            return
        self._sent[key] = window
        if self._arq is None:
            log.warning("alert", title=alert.title, detail=alert.message, priority=alert.priority)
            return
        task = asyncio.create_task(self._enqueue(f"alert:{key}:{window}", alert))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _enqueue(self, job_id: str, alert: Alert) -> None:
        assert self._arq is not None
        try:
            job: Any = await self._arq.enqueue_job(SEND_JOB, alert.to_dict(), self._url, _job_id=job_id)
            log.info("alert_queued", title=alert.title, duplicate=job is None)
        except Exception as exc:  # noqa: BLE001 - an alert must never break a worker
            log.warning("alert_enqueue_failed", error=type(exc).__name__)
