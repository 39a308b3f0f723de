"""The Redis side of the gateway's backlog: stream lengths, consumer-group lag, live workers.

Read in one pipelined round trip by `read_queues()`, which `GET /health` uses directly
and `QueueGauges` uses at scrape time. prometheus-client collects synchronously, so the
gauges export the snapshot taken by the last `refresh()`, which the `/metrics` handler
awaits just before rendering.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric
from redis.exceptions import ResponseError

from shared.redis import keys

if TYPE_CHECKING:
    from redis.asyncio import Redis

# A worker heartbeats every 5 s; three missed beats and it counts as gone.
WORKER_ALIVE_MS = 15_000


@dataclass(frozen=True, slots=True)
class StreamRef:
    """A stream to watch, and the consumer group whose backlog matters on it."""

    stream: str
    group: str | None = None


JOBS = StreamRef(keys.JOBS_STREAM, keys.JOBS_GROUP)
EVENTS = StreamRef(keys.EVENTS_STREAM, keys.EVENTS_GROUP)


@dataclass(frozen=True, slots=True)
class StreamState:
    length: int = 0  # entries kept in the stream (acked ones too, until trimmed)
    pending: int = 0  # delivered to a consumer of the group, not acked yet
    lag: int | None = None  # not delivered to the group yet (None: Redis cannot tell)
    group_exists: bool = False

    @property
    def unprocessed(self) -> int:
        """Entries the group still has to finish: pending plus not yet delivered."""
        return self.pending + (self.lag or 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "length": self.length,
            "pending": self.pending,
            "lag": self.lag,
            "unprocessed": self.unprocessed,
        }


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    streams: dict[str, StreamState] = field(default_factory=dict)
    # (worker id, milliseconds since its last heartbeat), most recent first.
    workers: list[tuple[str, int]] = field(default_factory=list)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _group_state(length: int, groups: Any, group: str) -> StreamState:
    if isinstance(groups, Exception) or not groups:
        return StreamState(length=length)
    for info in groups:
        if _text(info.get("name")) == group:
            lag = info.get("lag")
            return StreamState(
                length=length,
                pending=int(info.get("pending") or 0),
                lag=int(lag) if lag is not None else None,
                group_exists=True,
            )
    return StreamState(length=length)


async def read_queues(
    redis: Redis,
    streams: Sequence[StreamRef],
    *,
    alive_ms: int = WORKER_ALIVE_MS,
    now_ms: int | None = None,
) -> QueueSnapshot:
    """Lengths and group backlog of `streams`, and the workers seen within `alive_ms`.

    One round trip. A stream or group that does not exist yet reads as empty. Raises
    the client's error when Redis itself is unreachable.
    """
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    async with redis.pipeline(transaction=False) as pipe:
        for ref in streams:
            pipe.xlen(ref.stream)
            if ref.group is not None:
                pipe.xinfo_groups(ref.stream)
        pipe.zrevrangebyscore(keys.WORKERS_HEARTBEAT, "+inf", now - alive_ms, withscores=True)
        results = await pipe.execute(raise_on_error=False)
    for result in results:
        # A missing stream makes XINFO answer an error (expected); anything else is not.
        if isinstance(result, Exception) and not isinstance(result, ResponseError):
            raise result
    it = iter(results)
    states: dict[str, StreamState] = {}
    for ref in streams:
        raw_length = next(it)
        length = 0 if isinstance(raw_length, Exception) else int(raw_length)
        if ref.group is None:
            states[ref.stream] = StreamState(length=length)
        else:
            states[ref.stream] = _group_state(length, next(it), ref.group)
    heartbeats = next(it)
    workers = [] if isinstance(heartbeats, Exception) else [
        (_text(name), max(now - int(score), 0)) for name, score in heartbeats
    ]
    return QueueSnapshot(streams=states, workers=workers)


class QueueGauges:
    """A collector of the backlog gauges, exporting the snapshot of the last refresh.

    :param redis: the process's client.
    :param streams: the streams (and groups) to export.
    :param workers: also export the number of live workers.
    """

    def __init__(
        self, redis: Redis, streams: Sequence[StreamRef], *, workers: bool = True
    ) -> None:
        self._redis = redis
        self._streams = tuple(streams)
        self._workers = workers
        self._snapshot: QueueSnapshot | None = None
        self._redis_up = 0

    async def refresh(self) -> None:
        try:
            self._snapshot = await read_queues(self._redis, self._streams)
            self._redis_up = 1
        except Exception:  # noqa: BLE001 - exported as gateway_redis_up 0, never a failed scrape
            self._snapshot = None
            self._redis_up = 0

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "gateway_redis_up", "1 if Redis answered this scrape's backlog queries, else 0."
        )
        up.add_metric([], self._redis_up)
        yield up
        snapshot = self._snapshot
        if snapshot is None:
            return
        length = GaugeMetricFamily(
            "gateway_stream_length", "Entries kept in a Redis stream.", labels=["stream"]
        )
        pending = GaugeMetricFamily(
            "gateway_stream_pending",
            "Entries delivered to the consumer group and not yet acknowledged.",
            labels=["stream", "group"],
        )
        lag = GaugeMetricFamily(
            "gateway_stream_lag",
            "Entries not yet delivered to the consumer group.",
            labels=["stream", "group"],
        )
        unprocessed = GaugeMetricFamily(
            "gateway_stream_unprocessed",
            "Entries the group has not finished (pending + lag): for gw:events, the "
            "completion events not settled yet.",
            labels=["stream", "group"],
        )
        for ref in self._streams:
            state = snapshot.streams.get(ref.stream, StreamState())
            length.add_metric([ref.stream], state.length)
            if ref.group is None:
                continue
            pending.add_metric([ref.stream, ref.group], state.pending)
            if state.lag is not None:
                lag.add_metric([ref.stream, ref.group], state.lag)
            unprocessed.add_metric([ref.stream, ref.group], state.unprocessed)
        yield from (length, pending, lag, unprocessed)
        if self._workers:
            live = GaugeMetricFamily(
                "gateway_workers_live", "Workers that sent a heartbeat in the last 15 s."
            )
            live.add_metric([], len(snapshot.workers))
            yield live
