"""Live statistics per provider and model, shared by every worker through Redis.

Each attempt appends one compact sample to `gw:pstats:{provider}:{model}` (a capped
list, newest first), in the same pipeline that publishes the job's completion event, so
recording costs no extra round trip. Readers take the samples inside a rolling time
window and compute success rate and percentiles. Samples live in Redis, so they survive
worker restarts and every worker (and the api's `/v1/chat/health`) sees the same figures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.redis import keys

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

# Lists are capped, one per catalog (provider, model): bounded without a TTL; samples
# older than the window are ignored when read.
MAX_SAMPLES = 500
WINDOW_MS = 15 * 60_000


@dataclass(frozen=True, slots=True)
class Sample:
    ts_ms: int
    ok: bool
    latency_ms: int
    ttft_ms: int | None = None
    tokens_per_s: float | None = None

    def encode(self) -> str:
        ttft = "" if self.ttft_ms is None else str(self.ttft_ms)
        tps = "" if self.tokens_per_s is None else f"{self.tokens_per_s:.2f}"
        return f"{self.ts_ms},{int(self.ok)},{self.latency_ms},{ttft},{tps}"

    @classmethod
    def decode(cls, raw: bytes | str) -> Sample | None:
        text = raw.decode() if isinstance(raw, bytes) else raw
        parts = text.split(",")
        if len(parts) != 5:
            return None
        try:
            return cls(
                ts_ms=int(parts[0]),
                ok=parts[1] == "1",
                latency_ms=int(parts[2]),
                ttft_ms=int(parts[3]) if parts[3] else None,
                tokens_per_s=float(parts[4]) if parts[4] else None,
            )
        except ValueError:
            return None


def add_samples(pipe: Pipeline, provider: str, model: str, samples: Sequence[Sample]) -> None:
    """Queue the samples, oldest first, on `pipe` (the caller's pipeline sends them)."""
    key = keys.provider_stats(provider, model)
    pipe.lpush(key, *(sample.encode() for sample in samples))
    pipe.ltrim(key, 0, MAX_SAMPLES - 1)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(math.ceil(q * len(sorted_values)) - 1, 0)
    return sorted_values[min(rank, len(sorted_values) - 1)]


@dataclass(frozen=True, slots=True)
class TargetStats:
    samples: int
    successes: int
    latency_ms: tuple[float | None, float | None, float | None]  # p50, p90, p99
    ttft_ms: tuple[float | None, float | None, float | None]
    tokens_per_s_p50: float | None

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.samples if self.samples else None

    @property
    def smoothed_success(self) -> float:
        """Success rate with a prior of one success and one failure: never 0 or 1 on few samples."""
        return (self.successes + 1) / (self.samples + 2)

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "success_rate": None if self.success_rate is None else round(self.success_rate, 4),
            "latency_ms": dict(zip(("p50", "p90", "p99"), self.latency_ms, strict=True)),
            "ttft_ms": dict(zip(("p50", "p90", "p99"), self.ttft_ms, strict=True)),
            "tokens_per_second_p50": self.tokens_per_s_p50,
        }


EMPTY = TargetStats(0, 0, (None, None, None), (None, None, None), None)


def summarise(samples: Iterable[Sample], *, now_ms: int | None = None) -> TargetStats:
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    recent = [s for s in samples if now - s.ts_ms <= WINDOW_MS]
    if not recent:
        return EMPTY
    ok = [s for s in recent if s.ok]
    latencies = sorted(float(s.latency_ms) for s in ok)
    ttfts = sorted(float(s.ttft_ms) for s in ok if s.ttft_ms is not None)
    tps = sorted(s.tokens_per_s for s in ok if s.tokens_per_s is not None)
    return TargetStats(
        samples=len(recent),
        successes=len(ok),
        latency_ms=(percentile(latencies, 0.5), percentile(latencies, 0.9), percentile(latencies, 0.99)),
        ttft_ms=(percentile(ttfts, 0.5), percentile(ttfts, 0.9), percentile(ttfts, 0.99)),
        tokens_per_s_p50=percentile(tps, 0.5),
    )


async def read_stats(redis: Any, targets: Sequence[tuple[str, str]]) -> dict[tuple[str, str], TargetStats]:
    """Statistics of each (provider, model), in one pipelined round trip."""
    if not targets:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for provider, model in targets:
            pipe.lrange(keys.provider_stats(provider, model), 0, MAX_SAMPLES - 1)
        raw_lists = await pipe.execute()
    now = int(time.time() * 1000)
    result = {}
    for target, raw in zip(targets, raw_lists, strict=True):
        decoded = (Sample.decode(item) for item in raw)
        result[target] = summarise((s for s in decoded if s is not None), now_ms=now)
    return result
