"""The billing service's arq jobs, run by an arq Worker inside `gateway run billing`
(same process and Redis as the event consumer):

- `reconcile_job` every `reconcile_every_min` minutes: see `reconcile.py`; any problem
  is logged and sent to `NTFY_ERROR_URL` when set;
- `stale_holds_job` every minute: see `stale_holds.py`;
- `send_ntfy_alert` on demand: provider alerts queued by the workers (`shared/alerts.py`).

Both are also registered as plain functions, so they can be enqueued on demand. arq's
cron jobs are unique per run time, so several billing replicas run each tick once.
Job payloads and results are JSON (orjson), not arq's default pickle.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import structlog
from arq.connections import ArqRedis
from arq.cron import cron
from arq.worker import Worker
from redis.exceptions import RedisError

from services.billing.reconcile import DEFAULT_STUCK_AFTER_MS, reconcile
from services.billing.stale_holds import expire_stale_holds
from shared.alerts import Alert, post_to_ntfy, send_ntfy_alert
from shared.arq_pool import create_arq_pool, job_dumps, job_loads
from shared.redis.holds import HoldStore
from shared.redis.keys import ARQ_QUEUE

if TYPE_CHECKING:
    import aiohttp
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from shared.settings import Settings

log = structlog.get_logger("billing.jobs")

__all__ = ["ARQ_QUEUE", "create_arq_pool", "create_arq_worker", "stop_arq_worker"]

DEPS_KEY = "gw_deps"


@dataclass(slots=True)
class JobDeps:
    """What the jobs need, placed in arq's `ctx` by the billing process."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    http: aiohttp.ClientSession
    stuck_after_ms: int = DEFAULT_STUCK_AFTER_MS


async def reconcile_job(ctx: dict[str, Any]) -> dict[str, Any]:
    deps: JobDeps = ctx[DEPS_KEY]
    report = await reconcile(deps.sessions, deps.redis, stuck_after_ms=deps.stuck_after_ms)
    if report.problems and deps.settings.ntfy_error_url:
        await post_to_ntfy(
            deps.http,
            deps.settings.ntfy_error_url,
            Alert(
                title="Gateway billing: reconciliation found inconsistencies",
                message=report.summary(),
                priority=4,
                tags=("warning", "moneybag"),
            ),
        )
    return report.to_dict()


async def stale_holds_job(ctx: dict[str, Any]) -> dict[str, Any]:
    deps: JobDeps = ctx[DEPS_KEY]
    report = await expire_stale_holds(HoldStore(deps.redis))
    return {"users_scanned": report.users_scanned, "expired": [asdict(h) for h in report.expired]}


def create_arq_worker(pool: ArqRedis, deps: JobDeps, *, reconcile_every_min: int = 10) -> Worker:
    """An arq Worker for the billing jobs on `pool`; run it with `async_run()`."""
    every = max(1, min(reconcile_every_min, 60))
    return Worker(
        functions=[reconcile_job, stale_holds_job, send_ntfy_alert],
        cron_jobs=[
            cron(reconcile_job, name="cron:reconcile", minute=set(range(0, 60, every)), second=0),
            cron(stale_holds_job, name="cron:stale_holds", second=30),
        ],
        redis_pool=pool,
        queue_name=ARQ_QUEUE,
        ctx={DEPS_KEY: deps, "http": deps.http},
        handle_signals=False,  # the billing process owns SIGTERM/SIGINT
        job_serializer=job_dumps,
        job_deserializer=job_loads,
        keep_result=3600,
        max_tries=1,
    )


async def stop_arq_worker(worker: Worker, pool: ArqRedis, task: asyncio.Task[None]) -> None:
    """Stop a worker started with `async_run()`: jobs in flight are cancelled (they are
    idempotent and run again at their next tick), then the pool is closed.

    Not `Worker.close()`: it waits for running jobs and closes the pool with a call
    that redis-py deprecates.
    """
    task.cancel()
    jobs = [t for t in worker.tasks.values() if not t.done()]
    for job in jobs:
        job.cancel()
    await asyncio.gather(task, *jobs, return_exceptions=True)
    with contextlib.suppress(RedisError, OSError):
        await pool.delete(worker.health_check_key)
    await pool.aclose()
