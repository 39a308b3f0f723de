"""The billing consumer: settles completion events from `gw:events`, exactly once.

Delivery is at least once, so every step is idempotent and the order is chosen so
that a crash anywhere loses nothing:

1. settle the event in one database transaction (usage row + debit; the unique
   request id turns a redelivery into a no-op), and commit;
2. release the request's fund hold in Redis (idempotent, so it also runs for events
   that were already settled: the previous attempt may have died before it);
3. XACK the batch.

A crash before 3 leaves the entries pending: this consumer re-reads its own pending
entries when it starts (same consumer name), and any consumer claims entries idle
longer than `claim_idle_ms` (XAUTOCLAIM), e.g. those of a replica that never came back.

While the database is unreachable nothing is acked; the loop backs off (0.5 s to 10 s,
with jitter) and retries the same entries. An entry that can never be settled (not
decodable, or failing on its own data) is copied to `gw:events:dead` and acked, so that
one bad event cannot stall billing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from services.billing.metrics import BillingMetrics
from services.billing.settle import settle, settle_batch
from shared.messages import CompletionEvent, MessageError
from shared.redis import keys
from shared.redis.funds import HoldRelease

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.redis.funds import Funds
    from shared.settings import Settings

DEAD_LETTER_STREAM = keys.EVENTS_DEAD_LETTER_STREAM
DEAD_LETTER_MAXLEN = 100_000
# The stream field the worker writes the encoded CompletionEvent into.
EVENT_FIELD = b"e"

Entry = tuple[bytes, dict[bytes, bytes]]

log = structlog.get_logger("billing")


class SessionFactory(Protocol):
    """What the consumer needs of `async_sessionmaker`: a session in a transaction."""

    def begin(self) -> AbstractAsyncContextManager[AsyncSession]: ...


def is_transient(exc: BaseException) -> bool:
    """Whether a settlement failure is the database's state (retry) rather than the
    event's (dead-letter). Constraint and data errors repeat on every attempt."""
    if isinstance(exc, IntegrityError | DataError):
        return False
    return isinstance(exc, SQLAlchemyError | OSError | TimeoutError)


class Backoff:
    """Exponential delays with jitter: each is drawn from [d/2, d], d doubling up to a cap."""

    def __init__(
        self,
        initial_s: float = 0.5,
        max_s: float = 10.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._rng = rng
        self._attempt = 0

    def next_delay_s(self) -> float:
        ceiling = min(self.max_s, self.initial_s * 2.0**self._attempt)
        self._attempt += 1
        return ceiling / 2 + self._rng() * ceiling / 2

    def reset(self) -> None:
        self._attempt = 0


def default_consumer_name() -> str:
    # Stable across restarts of the same host or pod, so a restarted process picks up
    # its own pending entries at once instead of waiting for XAUTOCLAIM.
    return f"billing-{socket.gethostname()}"


def _entries(response: Any) -> list[Entry]:
    """Flatten an XREADGROUP reply (RESP2 list or RESP3 dict) for one stream."""
    if not response:
        return []
    if isinstance(response, dict):
        return [entry for batches in response.values() for batch in batches for entry in batch]
    return [entry for _stream, batch in response for entry in batch]


async def _sleep_unless_stopped(stop: asyncio.Event, delay_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay_s)


class BillingConsumer:
    """One member of the `billing` consumer group on `gw:events`.

    :param redis: client for the events stream (bytes responses).
    :param sessions: transaction factory, usually an `async_sessionmaker`.
    :param funds: the Redis fund scripts; holds are released after each commit.
    :param consumer_name: this member's name; reuse it across restarts.
    :param claim_idle_ms: entries pending longer than this are claimed from their
        consumer, which is presumed dead.
    :param bulk: settle each read batch in one transaction (else one per event).
    :param fill_wait_s: when a read brings less than half a batch, wait this long for more
        (holds are then released up to this much later; nobody waits on settlement).
    """

    def __init__(
        self,
        redis: Redis,
        sessions: SessionFactory,
        funds: Funds,
        *,
        consumer_name: str,
        batch_size: int = 500,
        block_ms: int = 1000,
        claim_idle_ms: int = 60_000,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        stream: str = keys.EVENTS_STREAM,
        group: str = keys.EVENTS_GROUP,
        bulk: bool = True,
        metrics: BillingMetrics | None = None,
        fill_wait_s: float = 0.1,
    ) -> None:
        self.redis = redis
        self.sessions = sessions
        self.funds = funds
        self.consumer_name = consumer_name
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.stream = stream
        self.group = group
        self.bulk = bulk
        self.metrics = metrics
        self.fill_wait_s = fill_wait_s
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        # Claiming scans the group's pending list; once per fraction of the idle time
        # is enough to pick up a dead consumer's entries promptly.
        self._claim_interval_s = min(claim_idle_ms / 4000, 15.0)
        self._next_claim_at = 0.0

    async def ensure_group(self) -> None:
        """Create the group (and stream) if missing, from the stream's start, so that
        events written before billing ever ran are settled too."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished first."""
        log.info("billing_consumer_started", consumer=self.consumer_name)
        group_ready = False
        own_pending_done = False
        while not stop.is_set():
            try:
                if not group_ready:
                    await self.ensure_group()
                    group_ready = True
                if not own_pending_done:
                    await self._process_own_pending()
                    own_pending_done = True
                if time.monotonic() >= self._next_claim_at:
                    await self._claim_abandoned()
                    self._next_claim_at = time.monotonic() + self._claim_interval_s
                await self._read_new(block_ms=self.block_ms)
                self._backoff.reset()
            except RedisError as exc:
                delay_s = self._backoff.next_delay_s()
                log.warning(
                    "billing_redis_unavailable", error=repr(exc), retry_in_s=round(delay_s, 3)
                )
                # A restarted or flushed Redis may have lost the group (NOGROUP): recreate.
                group_ready = False
                own_pending_done = False
                await _sleep_unless_stopped(stop, delay_s)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay_s = self._backoff.next_delay_s()
                log.warning(
                    "billing_db_unavailable",
                    error=type(exc).__name__,
                    detail=str(getattr(exc, "orig", None) or exc)[:200],
                    retry_in_s=round(delay_s, 3),
                )
                # What was read but not acked is now pending: retry it first.
                own_pending_done = False
                await _sleep_unless_stopped(stop, delay_s)
        log.info("billing_consumer_stopped", consumer=self.consumer_name)

    async def drain_once(self) -> int:
        """Process everything available now (own pending, claimable, new) without
        blocking; returns the number of entries handled. For tests and one-shot use."""
        await self.ensure_group()
        handled = await self._process_own_pending()
        handled += await self._claim_abandoned()
        while count := await self._read_new(block_ms=None):
            handled += count
        return handled

    async def _read_new(self, *, block_ms: int | None) -> int:
        response = await self.redis.xreadgroup(
            self.group,
            self.consumer_name,
            {self.stream: ">"},
            count=self.batch_size,
            block=block_ms,
        )
        entries = _entries(response)
        if block_ms is not None and 0 < len(entries) < self.batch_size // 2 and self.fill_wait_s:
            # A settlement costs about the same for one event as for fifty, and nothing
            # waits on it: under light load, let the batch fill for a moment.
            await asyncio.sleep(self.fill_wait_s)
            more = await self.redis.xreadgroup(
                self.group,
                self.consumer_name,
                {self.stream: ">"},
                count=self.batch_size - len(entries),
            )
            entries += _entries(more)
        return await self._process(entries)

    async def _process_own_pending(self) -> int:
        """Entries this consumer name read earlier but never acked (a crash, an outage)."""
        handled = 0
        last_id: bytes | str = "0"
        while True:
            response = await self.redis.xreadgroup(
                self.group, self.consumer_name, {self.stream: last_id}, count=self.batch_size
            )
            entries = _entries(response)
            if not entries:
                return handled
            handled += await self._process(entries)
            last_id = entries[-1][0]

    async def _claim_abandoned(self) -> int:
        """Take over entries other consumers left pending for longer than claim_idle_ms."""
        handled = 0
        start: bytes | str = "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer_name,
                min_idle_time=self.claim_idle_ms,
                start_id=start,
                count=self.batch_size,
            )
            next_start, entries = reply[0], reply[1]
            if entries:
                log.warning("billing_claimed_entries", count=len(entries))
                handled += await self._process(entries)
            if next_start in (b"0-0", "0-0"):
                return handled
            start = next_start

    async def _process(self, entries: Sequence[Entry]) -> int:
        """Settle the entries (as one batch when `bulk`), then ack them in one call."""
        if not entries:
            return 0
        decoded: list[tuple[bytes, dict[bytes, bytes], CompletionEvent]] = []
        skipped: list[bytes] = []
        for entry_id, fields in entries:
            event = await self._decode(entry_id, fields)
            if event is None:
                skipped.append(entry_id)
            else:
                decoded.append((entry_id, fields, event))
        if skipped:  # dead-lettered or empty: done with them whatever happens next
            await self.redis.xack(self.stream, self.group, *skipped)
        if self.bulk and len(decoded) > 1:
            if not await self._settle_batch([event for _, _, event in decoded]):
                await self._settle_one_by_one(decoded)
        else:
            await self._settle_one_by_one(decoded)
        if decoded:
            await self.redis.xack(self.stream, self.group, *(entry[0] for entry in decoded))
        return len(entries)

    async def _decode(self, entry_id: bytes, fields: dict[bytes, bytes]) -> CompletionEvent | None:
        """The entry's event; None (dead-lettered or logged) when there is nothing to settle."""
        if not fields:
            # Trimmed or deleted from the stream while pending: nothing left to settle.
            log.warning("event_entry_missing", entry_id=entry_id.decode())
            return None
        try:
            return CompletionEvent.decode(fields[EVENT_FIELD])
        except (KeyError, MessageError) as exc:
            log.error("event_undecodable", entry_id=entry_id.decode(), error=str(exc)[:200])
            await self._dead_letter(entry_id, fields, f"undecodable: {exc}")
            return None

    async def _settle_batch(self, events: list[CompletionEvent]) -> bool:
        """One transaction for the whole batch. False when it must be redone one by one
        (an error tied to some event's data); transient errors propagate (retry later)."""
        try:
            async with self.sessions.begin() as session:
                outcome = await settle_batch(session, events)
        except Exception as exc:
            if is_transient(exc):
                raise
            log.warning("batch_settle_fallback", events=len(events), error=type(exc).__name__)
            return False
        # After the commit: holds are released even for already-settled events, because
        # the attempt that settled them may have died before this step.
        await self._release_holds(events)
        # Per event at debug (the usage table is the record, and the api logs each
        # request); one info line per batch.
        for event in outcome.settled:
            log.debug(
                "event_settled",
                request_id=event.request_id,
                user_id=event.user_id,
                cost_nusd=event.cost_nusd,
                provider=event.provider,
            )
        if outcome.settled:
            log.info(
                "batch_settled",
                events=len(outcome.settled),
                cost_nusd=sum(event.cost_nusd for event in outcome.settled),
            )
        if outcome.already_settled:
            log.info("events_already_settled", count=len(outcome.already_settled))
        if self.metrics is not None:
            self.metrics.observe_batch(outcome.settled, skipped=len(outcome.already_settled))
        return True

    async def _settle_one_by_one(
        self, decoded: Sequence[tuple[bytes, dict[bytes, bytes], CompletionEvent]]
    ) -> None:
        done: list[bytes] = []
        try:
            for entry_id, fields, event in decoded:
                await self._handle(entry_id, fields, event)
                done.append(entry_id)
        except Exception:
            # Spare what was already settled a redelivery; the rest stays pending.
            if done:
                await self.redis.xack(self.stream, self.group, *done)
            raise

    async def _release_holds(self, events: Sequence[CompletionEvent]) -> None:
        """Release holds (and count the keys' spend) of a batch in one pipelined round trip."""
        await self.funds.release_holds(
            [HoldRelease(e.user_id, e.request_id, e.cost_nusd, e.key_id) for e in events]
        )

    async def _handle(
        self, entry_id: bytes, fields: dict[bytes, bytes], event: CompletionEvent
    ) -> None:
        with structlog.contextvars.bound_contextvars(request_id=event.request_id):
            try:
                async with self.sessions.begin() as session:
                    settled = await settle(session, event)
            except Exception as exc:
                if is_transient(exc):
                    raise
                log.exception(
                    "event_settle_failed",
                    entry_id=entry_id.decode(),
                    user_id=event.user_id,
                    error=type(exc).__name__,
                )
                await self._dead_letter(entry_id, fields, f"{type(exc).__name__}: {exc}")
                return
            # After the commit: the hold is released even for an already-settled event,
            # because the attempt that settled it may have died before this step.
            await self._release_holds([event])
            if self.metrics is not None:
                self.metrics.observe(event, settled=settled)
            if settled:
                log.debug(
                    "event_settled",
                    request_id=event.request_id,
                    user_id=event.user_id,
                    cost_nusd=event.cost_nusd,
                    provider=event.provider,
                )

    async def _dead_letter(self, entry_id: bytes, fields: dict[bytes, bytes], error: str) -> None:
        record: dict[Any, Any] = dict(fields)
        record["dead_source_id"] = entry_id
        record["dead_error"] = error[:1000]
        record["dead_consumer"] = self.consumer_name
        await self.redis.xadd(
            DEAD_LETTER_STREAM, record, maxlen=DEAD_LETTER_MAXLEN, approximate=True
        )


def _log_jobs_end(task: asyncio.Task[None]) -> None:
    # The arq worker runs beside the consumer; if it dies, say so rather than go quiet.
    if not task.cancelled() and task.exception() is not None:
        log.error("billing_jobs_crashed", error=repr(task.exception()))


async def run_billing(
    settings: Settings,
    redis_url: str,
    stop: asyncio.Event,
    *,
    consumer_name: str | None = None,
    reconcile_every_min: int = 10,
) -> None:
    """Run the billing consumer and, beside it, the arq worker of the billing jobs
    (reconciliation, stale holds), until `stop` is set; then close what it opened."""
    import aiohttp
    from prometheus_client import CollectorRegistry
    from shared.redis.client import redis_client
    from sqlalchemy.engine import make_url

    from services.billing.jobs import (
        JobDeps,
        create_arq_pool,
        create_arq_worker,
        stop_arq_worker,
    )
    from shared.db.engine import create_engine, create_sessionmaker
    from shared.redis.funds import Funds

    database_url = settings.effective_database_url
    engine = create_engine(database_url)
    sessions = create_sessionmaker(engine)
    # socket_timeout stays well above the XREADGROUP block time.
    redis = redis_client(redis_url, socket_connect_timeout=5, socket_timeout=30)
    http = aiohttp.ClientSession()
    arq_pool = await create_arq_pool(redis_url)
    jobs = create_arq_worker(
        arq_pool,
        JobDeps(settings=settings, sessions=sessions, redis=redis, http=http),
        reconcile_every_min=reconcile_every_min,
    )
    jobs_task = asyncio.create_task(jobs.async_run())
    jobs_task.add_done_callback(_log_jobs_end)
    metrics = BillingMetrics(CollectorRegistry(), redis, dead_letter_stream=DEAD_LETTER_STREAM)
    metrics_server = await metrics.serve(host=settings.host, port=settings.billing_metrics_port)
    try:
        consumer = BillingConsumer(
            redis,
            sessions,
            Funds(redis),
            consumer_name=consumer_name or default_consumer_name(),
            metrics=metrics,
            batch_size=settings.billing_batch_size,
            fill_wait_s=settings.billing_fill_wait_ms / 1000,
        )
        log.info(
            "billing_starting",
            database=make_url(database_url).render_as_string(hide_password=True),
        )
        await consumer.run(stop)
    finally:
        if metrics_server is not None:
            await metrics_server.close()
        await stop_arq_worker(jobs, arq_pool, jobs_task)
        await http.close()
        await redis.aclose()
        await engine.dispose()
