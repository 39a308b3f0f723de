"""The worker process: a consumer of the jobs stream that runs many jobs at once.

- Reads with XREADGROUP as one consumer of group `workers`, never holding more jobs
  than `WORKER_CONCURRENCY`.
- Listens once on `gw:cancel` for clients that went away and stops their jobs.
- Keeps its in-flight jobs fresh in the pending list (XCLAIM to itself) and reclaims,
  with XAUTOCLAIM, jobs left idle by a worker that died.
- Ends each job with one MULTI: XADD the completion event, XACK the job. That step is
  shielded from cancellation so a shutdown cannot lose a finished job's event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, TimeoutError as RedisTimeoutError

from services.worker import upstream
from services.worker.alerts import AlertSender
from services.worker.cancel import CancelSignal, apply_cancel_marks
from services.worker.fallback import RetryPolicy
from services.worker.job import WorkerDeps, execute
from services.worker.outbox import Outbox
from services.worker.metrics import WorkerMetrics, serve_worker_metrics
from services.worker.providers import resolve_adapters
from services.worker.routing import provider_access
from shared.catalog import catalog_for
from shared.metrics import LabelBounds
from shared.circuit import CircuitPolicy, Circuits
from shared.messages import CompletionEvent, Job, MessageError, Outcome
from shared.provider_stats import Sample, add_samples, read_stats
from shared.redis import keys
from shared.redis.client import redis_client
from shared.settings import Settings

log = structlog.get_logger("worker")

# After losing its cancel subscription the worker resubscribes within this, doubling to 1 s.
CANCEL_RESUBSCRIBE_FIRST_S = 0.1


@dataclass(slots=True)
class Running:
    task: asyncio.Task[None]
    cancel: CancelSignal
    request_id: str


class Worker:
    def __init__(
        self,
        deps: WorkerDeps,
        *,
        consumer_name: str | None = None,
        concurrency: int = 512,
        claim_idle_ms: int = 30_000,
        heartbeat_s: float = 5.0,
        shutdown_grace_s: float = 30.0,
        health_refresh_s: float = 1.0,
        alerts: AlertSender | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.deps = deps
        self.redis = deps.redis
        self.name = consumer_name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.concurrency = concurrency
        self.claim_idle_ms = claim_idle_ms
        self.heartbeat_s = heartbeat_s
        self.shutdown_grace_s = shutdown_grace_s
        self.health_refresh_s = health_refresh_s
        self.alerts = alerts
        self.metrics = metrics
        if deps.outbox is None:
            deps.outbox = Outbox(deps.redis)  # shared by all its jobs
        self.outbox = deps.outbox
        self.running: dict[bytes, Running] = {}
        self._slot_freed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        # Every (provider, model) this worker may call: whose health it tracks.
        self._targets = sorted(
            {
                (offer.provider, model.id)
                for model in deps.catalog.models
                for offer in model.offers
                if offer.provider in deps.access
            }
        )

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(keys.JOBS_STREAM, keys.JOBS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        await self.ensure_group()
        log.info("worker_started", consumer=self.name, concurrency=self.concurrency)
        await self._refresh_health()
        helpers = [
            asyncio.create_task(self._listen_cancels(stop)),
            asyncio.create_task(self._maintain(stop)),
            asyncio.create_task(self._health_loop(stop)),
        ]
        try:
            await self._read_loop(stop)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._drain()
            await self.redis.zrem(keys.WORKERS_HEARTBEAT, self.name)
            log.info("worker_stopped", consumer=self.name)

    async def _read_loop(self, stop: asyncio.Event) -> None:
        backoff_s = 0.2
        while not stop.is_set():
            free = self.concurrency - len(self.running)
            if free <= 0:
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), timeout=1.0)
                continue
            try:
                response = await self.redis.xreadgroup(
                    keys.JOBS_GROUP,
                    self.name,
                    {keys.JOBS_STREAM: ">"},
                    count=min(free, 128),
                    block=1000,
                )
                backoff_s = 0.2
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("jobs_read_failed", error=str(exc), retry_in_s=backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                continue
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self.ensure_group()
                    continue
                raise
            for _stream, entries in response or ():
                for entry_id, fields in entries:
                    self._start(entry_id, fields, generation=1)

    def _start(self, entry_id: bytes, fields: dict[bytes, bytes] | None, *, generation: int) -> None:
        if entry_id in self.running:
            return
        try:
            if not fields:
                raise MessageError("entry was trimmed from the stream")
            job = Job.from_fields(fields)
        except MessageError as exc:
            log.error("job_undecodable", entry_id=entry_id.decode(), error=str(exc))
            asyncio.create_task(self._ack_only(entry_id))
            return
        cancel = CancelSignal()
        task = asyncio.create_task(self._run(entry_id, job, cancel, generation))
        self.running[entry_id] = Running(task=task, cancel=cancel, request_id=job.request_id)

    async def _run(self, entry_id: bytes, job: Job, cancel: CancelSignal, generation: int) -> None:
        structlog.contextvars.bind_contextvars(request_id=job.request_id)
        try:
            if generation > 1 and not await self._listener_alive(job):
                log.info("reclaimed_job_dropped", reason="client_gone")
                cancel.set()
            event = await execute(self.deps, job, cancel=cancel, generation=generation)
            await asyncio.shield(self._finish(entry_id, event))
            if self.metrics is not None:
                self.metrics.observe(event)
            if self.alerts is not None and event.attempts:
                self.alerts.after_job(event)
            # The api's `request_finished` is the one info line of a request that went
            # well (three lines per request tripled the log volume); this one is at info
            # only when something went wrong, at debug otherwise.
            emit = log.debug if event.outcome is Outcome.OK else log.info
            emit(
                "job_finished",
                outcome=event.outcome.value,
                provider=event.provider,
                status=event.http_status,
                cost_nusd=event.cost_nusd,
                attempts=len(event.attempts),
                duration_ms=event.duration_ms,
                model=event.model_served or event.model_requested,
                prompt_tokens=event.usage.prompt_tokens,
                completion_tokens=event.usage.completion_tokens,
                ttfc_ms=event.ttfc_ms,
                queue_wait_ms=event.queue_wait_ms,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left unacked on purpose: another worker reclaims it after the idle time.
            log.exception("job_failed")
        finally:
            self.running.pop(entry_id, None)
            self._slot_freed.set()

    async def _listener_alive(self, job: Job) -> bool:
        channel = keys.reply_channel(job.reply_to)
        counts = await self.redis.pubsub_numsub(channel)
        return any(count > 0 for _name, count in counts)

    async def _finish(self, entry_id: bytes, event: CompletionEvent) -> None:
        end = JobEnd(entry_id, event.encode(), _samples(event))
        backoff_s = 0.2
        while True:
            try:
                # With the jobs that finish in the same tick, in one MULTI/EXEC.
                await self.outbox.submit_together(build_job_ends, end)
                return
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # Billing must hear about every finished job: keep trying while Redis is away.
                log.warning("event_append_failed", error=str(exc), retry_in_s=backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    async def _health_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.health_refresh_s)
            try:
                await self._refresh_health()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("health_refresh_failed", error=str(exc))

    async def _refresh_health(self) -> None:
        """Statistics and circuits for routing, read in the background, never per request."""
        self.deps.stats = await read_stats(self.redis, self._targets)
        if self.deps.circuits is not None:
            await self.deps.circuits.refresh(self._targets)

    async def _ack_only(self, entry_id: bytes) -> None:
        await self.redis.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, entry_id)

    async def _listen_cancels(self, stop: asyncio.Event) -> None:
        retry_s = CANCEL_RESUBSCRIBE_FIRST_S
        while not stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.CANCEL_CHANNEL)
                # Cancels published while this worker was not subscribed are lost to
                # pub/sub; the marks the api leaves are not.
                await self._apply_cancel_marks()
                retry_s = CANCEL_RESUBSCRIBE_FIRST_S
                async for message in pubsub.listen():
                    request_id = message["data"].decode()
                    for running in list(self.running.values()):
                        if running.request_id == request_id:
                            running.cancel.set()
            except (RedisConnectionError, RedisTimeoutError, OSError):
                # Back soon: a job whose client left during the outage is still running.
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, 1.0)
            finally:
                await pubsub.aclose()

    async def _apply_cancel_marks(self) -> None:
        jobs = [(r.request_id, r.cancel) for r in self.running.values()]
        found = await apply_cancel_marks(self.redis, jobs)
        if found:
            log.info("jobs_cancelled_by_mark", jobs=found)

    async def _maintain(self, stop: asyncio.Event) -> None:
        """Heartbeat, keep own jobs fresh in the pending list, reclaim abandoned jobs."""
        interval_s = min(self.heartbeat_s, self.claim_idle_ms / 3000)
        while not stop.is_set():
            try:
                await self._heartbeat()
                await self._reclaim()
                await self._apply_cancel_marks()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("worker_maintenance_failed", error=str(exc))
            await asyncio.sleep(interval_s)

    async def _heartbeat(self) -> None:
        now = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.WORKERS_HEARTBEAT, {self.name: now})
            pipe.zremrangebyscore(keys.WORKERS_HEARTBEAT, 0, now - 60_000)
            if self.running:
                # Claiming our own jobs resets their idle time, so nobody reclaims them.
                pipe.xclaim(
                    keys.JOBS_STREAM,
                    keys.JOBS_GROUP,
                    self.name,
                    0,
                    list(self.running),
                    justid=True,
                )
            await pipe.execute()

    async def _reclaim(self) -> None:
        free = self.concurrency - len(self.running)
        if free <= 0:
            return
        result = await self.redis.xautoclaim(
            keys.JOBS_STREAM,
            keys.JOBS_GROUP,
            self.name,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=min(free, 100),
        )
        claimed = result[1] if len(result) > 1 else []
        deleted = result[2] if len(result) > 2 else []
        if deleted:
            await self.redis.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, *deleted)
        for entry_id, fields in claimed:
            log.info("job_reclaimed", entry_id=entry_id.decode())
            self._start(entry_id, fields, generation=int(time.time() * 1000))

    async def _drain(self) -> None:
        if not self.running:
            return
        log.info("worker_draining", in_flight=len(self.running))
        tasks = [r.task for r in self.running.values()]
        _done, pending = await asyncio.wait(tasks, timeout=self.shutdown_grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class JobEnd(NamedTuple):
    entry_id: bytes
    event: bytes  # encoded CompletionEvent
    samples: list[tuple[str, str, Sample]]  # (provider, model, sample)


def build_job_ends(pipe: Any, ends: list[JobEnd]) -> None:
    """The Redis side of finishing jobs: each one's event on the events stream, then one
    XACK for all of them, and their health samples, one push per provider and model."""
    for end in ends:
        pipe.xadd(
            keys.EVENTS_STREAM, {"e": end.event}, maxlen=keys.EVENTS_STREAM_MAXLEN, approximate=True
        )
    pipe.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, *(end.entry_id for end in ends))
    samples: dict[tuple[str, str], list[Sample]] = {}
    for end in ends:
        for provider, model, sample in end.samples:
            samples.setdefault((provider, model), []).append(sample)
    for (provider, model), batch in samples.items():
        add_samples(pipe, provider, model, batch)


def _samples(event: CompletionEvent) -> list[tuple[str, str, Sample]]:
    """One health sample per attempt; business errors and cancellations say nothing of health."""
    samples = []
    for attempt in event.attempts:
        if attempt.outcome not in {"ok", "technical"}:
            continue
        ok = attempt.outcome == "ok"
        tps = None
        if ok and event.usage.completion_tokens and attempt.latency_ms > (attempt.ttft_ms or 0):
            generation_s = (attempt.latency_ms - (attempt.ttft_ms or 0)) / 1000
            tps = event.usage.completion_tokens / generation_s if generation_s >= 0.001 else None
        sample = Sample(
            ts_ms=event.finished_ms,
            ok=ok,
            latency_ms=attempt.latency_ms,
            ttft_ms=attempt.ttft_ms if ok else None,
            tokens_per_s=tps,
        )
        samples.append((attempt.provider, attempt.model, sample))
    return samples


async def run_worker(settings: Settings, redis_url: str, stop: asyncio.Event) -> None:
    demo_url = settings.provider_base_urls.get("fake") if settings.demo_mode else None
    catalog = catalog_for(settings.catalog_path, demo_base_url=demo_url)
    search_dir = Path(settings.catalog_path).resolve().parent if settings.catalog_path else None
    adapters = resolve_adapters(
        (p.adapter for p in catalog.providers.values()), search_dir=search_dir
    )
    redis = redis_client(redis_url)
    http = upstream.create_client_session()
    deps = WorkerDeps(
        settings=settings,
        redis=redis,
        http=http,
        catalog=catalog,
        access=provider_access(catalog, settings),
        timeouts=upstream.Timeouts(
            connect_s=settings.upstream_connect_timeout_s,
            first_byte_s=settings.upstream_first_byte_timeout_s,
            idle_s=settings.upstream_idle_timeout_s,
        ),
        adapters=adapters,
        outbox=Outbox(redis),
        circuits=Circuits(
            redis,
            CircuitPolicy(
                failure_threshold=settings.circuit_failure_threshold,
                cooldown_ms=int(settings.circuit_cooldown_s * 1000),
            ),
        ),
        retry=RetryPolicy(max_retries=settings.provider_max_retries),
    )
    if not deps.access:
        log.warning("no_provider_enabled", hint="set API_KEY_<PROVIDER> or run in demo mode")
    alerts = await AlertSender.create(settings, redis_url)
    metrics = WorkerMetrics(CollectorRegistry(), LabelBounds(catalog))
    worker = Worker(
        deps,
        concurrency=settings.worker_concurrency,
        claim_idle_ms=settings.worker_claim_idle_ms,
        alerts=alerts,
        metrics=metrics,
    )
    circuits = deps.circuits
    metrics_server = await serve_worker_metrics(
        metrics,
        redis,
        host=settings.host,
        port=settings.worker_metrics_port,
        running=lambda: len(worker.running),
        concurrency=worker.concurrency,
        circuits=(lambda: {k: v.state.value for k, v in circuits.snapshot.items()})
        if circuits is not None
        else None,
    )
    try:
        await worker.run(stop)
    finally:
        if metrics_server is not None:
            await metrics_server.close()
        await alerts.close()
        await http.close()
        await redis.aclose()
