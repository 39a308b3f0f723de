"""The scenarios S1-S7: each runs the same load directly against the fake upstream, then
through the gateway, and returns both results with what the gateway added.

Every load is bounded in time (`Scale` shortens them all for a quick look). CPU is
read from /proc before and after each gateway run, so each result also says how many
microseconds of CPU every process spent per request.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import loadgen
from bench.procs import busy_share, cpu_jiffies
from bench.stack import (
    FAILOVER_MODEL,
    FLOOR_KEY,
    SERVICES,
    UPSTREAM_KEY,
    Stack,
    failover_model,
)

MODEL = "bench-model"
BILLING_DRAIN_TIMEOUT_S = 180
FAILOVER_ORDER = {"order": ["benchfail", "bench"]}
STREAM_DIRECTIVE = "[[fake:ttft_ms=50,chunks=20,chunk_delay_ms=5]]"
HOLD_DIRECTIVE = "[[fake:ttft_ms=50,chunks=20,chunk_delay_ms=400]]"
STREAM_CHUNKS = 20
HOLD_STREAMS = 1000
PROMPT_SIZES_TOKENS = (1_000, 10_000, 100_000)
_WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dogs", "while", "seven")


@dataclass(frozen=True, slots=True)
class Scale:
    """Multiplies every measured duration (warm-ups stay as they are)."""

    factor: float = 1.0

    def __call__(self, seconds: float) -> float:
        return max(round(seconds * self.factor, 2), 1.0)


def chat_body(content: str, *, model: str = MODEL, stream: bool = False, **extra: Any) -> str:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
    body.update(extra)
    return json.dumps(body)


def prompt_of(tokens: int) -> str:
    """About `tokens` tokens by the gateway's own estimate (4 characters a token)."""
    text: list[str] = []
    size = 0
    i = 0
    while size < tokens * 4:
        word = _WORDS[i % len(_WORDS)] + " "
        text.append(word)
        size += len(word)
        i += 1
    return "".join(text)


def s1_load() -> dict[str, Any]:
    return {"mode": "closed", "body": chat_body("Say hello."), "connections": 64, "warmup_s": 2}


def s2_load(rate: int) -> dict[str, Any]:
    return {"mode": "open", "body": chat_body("Say hello."), "rate": rate, "warmup_s": 1}


def s3_load() -> dict[str, Any]:
    return {
        "mode": "stream",
        "body": chat_body(STREAM_DIRECTIVE + " Tell me a story.", stream=True),
        "connections": 50,
        "warmup_s": 2,
        "expect_chunks": STREAM_CHUNKS,
    }


def s7_load() -> dict[str, Any]:
    return {
        "mode": "flood",
        "body": chat_body("Say hello."),
        "connections": 64,
        "warmup_s": 2,
        "bad": {"ratio": 10, "max_inflight": 512},
    }


def refusal_load(duration_s: float, expect_status: list[int]) -> dict[str, Any]:
    """Random invalid keys only: what one refusal costs, measured alone."""
    return {
        "mode": "closed",
        "body": chat_body("Say hello."),
        "connections": 32,
        "warmup_s": 1,
        "duration_s": duration_s,
        "random_key": True,
        "expect_status": expect_status,
    }


class Bench:
    """One run's scenarios against one stack."""

    def __init__(self, stack: Stack, scale: Scale) -> None:
        self.stack = stack
        self.scale = scale
        self.cpu = stack.pinning.driver_cpu
        self.rss_idle: dict[str, int] = {}

    # -- targets -----------------------------------------------------------------------

    def direct(self, **spec: Any) -> dict[str, Any]:
        return {
            "url": f"{self.stack.fake_url}/v1/chat/completions",
            "headers": {"authorization": f"Bearer {UPSTREAM_KEY}"},
            **spec,
        }

    def gateway(self, **spec: Any) -> dict[str, Any]:
        return {
            "url": f"{self.stack.api_url}/v1/chat/completions",
            "headers": {"authorization": f"Bearer {self.stack.api_key}"},
            **spec,
        }

    def measure(
        self,
        spec: dict[str, Any],
        *,
        on_marker: Callable[[str], None] | None = None,
        charged: tuple[str, ...] = (*SERVICES, "redis"),
    ) -> dict[str, Any]:
        """Run one load, then wait until billing has settled every event it caused.

        Adds the CPU each process spent, in total and per request answered (warm-up
        included, as the CPU time covers it), settlement included, with `gateway_total` the
        sum over the processes `charged` with serving the load; how far billing was
        behind when the load stopped; and the rate the run sustained once settling is
        counted (a gateway that answers faster than it can bill is not keeping up).
        """
        before, jiffies, commands = self.stack.cpu(), cpu_jiffies(), self.stack.redis_commands()
        started = time.monotonic()
        result = loadgen.run(spec, cpu=self.cpu, on_marker=on_marker)
        result["billing_backlog_at_end"] = self.stack.billing_backlog()
        drain_s = self.stack.wait_billing_drained(BILLING_DRAIN_TIMEOUT_S)
        result["billing_drain_s"] = drain_s
        wall_s = time.monotonic() - started
        busy, after = busy_share(jiffies, cpu_jiffies()), self.stack.cpu()
        n = max(int(result.get("all_requests", 0)), 1)
        result["redis_calls_per_request"] = _per_request_calls(
            commands, self.stack.redis_commands(), n
        )
        spent = {name: after[name] - before.get(name, 0.0) for name in after}
        spent["loadgen"] = result.get("loadgen_cpu_ms", 0) / 1000
        result["cpu_s"] = {k: round(v, 3) for k, v in spent.items()}
        result["cpu_us_per_request"] = {k: round(v * 1e6 / n, 1) for k, v in spent.items()}
        gateway_cpu = sum(spent.get(name, 0.0) for name in charged)
        result["cpu_us_per_request"]["gateway_total"] = round(gateway_cpu * 1e6 / n, 1)
        # Whether a CPU was the limit, and how much of it went to processes not ours (the
        # machine is shared): busy share of each CPU versus our processes' share of it.
        result["cpu_busy_share"] = busy
        result["gateway_share_of_cpu"] = round(gateway_cpu / wall_s, 3)
        if "rps" in result and "duration_s" in result:
            late_s = drain_s if drain_s is not None else float("inf")
            window = result["duration_s"]
            result["sustained_rps"] = round(result["rps"] * window / (window + late_s), 1)
        return result

    def warm_up(self) -> None:
        """A few requests of each kind, so first-use costs land outside every measurement."""
        for spec in (
            self.gateway(mode="closed", body=chat_body("warm up"), connections=4, duration_s=1),
            self.gateway(
                mode="stream",
                body=chat_body(STREAM_DIRECTIVE + " warm up", stream=True),
                connections=4,
                duration_s=1,
                expect_chunks=STREAM_CHUNKS,
            ),
            self.gateway(
                mode="closed",
                body=chat_body("warm up", model=FAILOVER_MODEL, provider=FAILOVER_ORDER),
                connections=2,
                duration_s=1,
            ),
        ):
            loadgen.run(spec, cpu=self.cpu)
        self.stack.wait_billing_drained(30)
        time.sleep(1)
        self.rss_idle = self.stack.rss()

    # -- S1 ----------------------------------------------------------------------------

    def s1_throughput(self) -> dict[str, Any]:
        load = s1_load()
        direct = self.measure(self.direct(**load, duration_s=self.scale(10)))
        gateway = self.measure(self.gateway(**load, duration_s=self.scale(15)))
        return {
            "direct": direct,
            "gateway": gateway,
            "throughput_ratio": _ratio(gateway["rps"], direct["rps"]),
            "added_latency_ms": _added(direct["latency_ms"], gateway["latency_ms"]),
        }

    # -- S2 ----------------------------------------------------------------------------

    def s2_added_latency(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for rate in (100, 20):
            load = s2_load(rate)
            direct = self.measure(self.direct(**load, duration_s=self.scale(15)))
            gateway = self.measure(self.gateway(**load, duration_s=self.scale(15)))
            out[f"{rate}rps"] = {
                "direct": direct,
                "gateway": gateway,
                "added_ms": _added(direct["latency_ms"], gateway["latency_ms"]),
            }
        return out

    # -- S3 ----------------------------------------------------------------------------

    def s3_streaming(self) -> dict[str, Any]:
        load = s3_load()
        direct = self.measure(self.direct(**load, duration_s=self.scale(10)))
        gateway = self.measure(self.gateway(**load, duration_s=self.scale(10)))
        return {
            "direct": direct,
            "gateway": gateway,
            "added_ttft_ms": _added(direct["ttft_ms"], gateway["ttft_ms"]),
            "added_total_ms": _added(direct["total_ms"], gateway["total_ms"]),
            "added_gap_ms": _added(direct["gap_ms"], gateway["gap_ms"]),
        }

    # -- S4 ----------------------------------------------------------------------------

    def s4_memory(self) -> dict[str, Any]:
        """Call after S1-S3: RSS now, then while 1,000 streams are open at once."""
        time.sleep(1)
        after_load = self.stack.rss()
        load = {
            "mode": "hold",
            "body": chat_body(HOLD_DIRECTIVE + " Hold on.", stream=True),
            "connections": HOLD_STREAMS,
            "expect_chunks": STREAM_CHUNKS,
            "timeout_s": 90,
        }
        direct = self.measure(self.direct(**load))
        sampler = _RssSampler(self.stack)
        gateway = self.measure(self.gateway(**load), on_marker=sampler.marker)
        sampler.stop()
        return {
            "rss_idle": self.rss_idle,
            "rss_after_s1_s3": after_load,
            "rss_all_streams_open": sampler.at_marker,
            "rss_peak_during_hold": sampler.peak,
            "direct": direct,
            "gateway": gateway,
        }

    # -- S5 ----------------------------------------------------------------------------

    def s5_large_prompts(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for tokens in PROMPT_SIZES_TOKENS:
            body = chat_body(prompt_of(tokens))
            load = {"mode": "closed", "body": body, "connections": 1, "warmup_s": 0.5}
            seconds = self.scale(5 if tokens < 100_000 else 8)
            direct = self.measure(self.direct(**load, duration_s=seconds))
            gateway = self.measure(self.gateway(**load, duration_s=seconds))
            out[f"{tokens // 1000}k"] = {
                "request_bytes": len(body),
                "direct": direct,
                "gateway": gateway,
                "added_ms": _added(direct["latency_ms"], gateway["latency_ms"]),
            }
        return out

    # -- S6 ----------------------------------------------------------------------------

    def s6_failover(self) -> dict[str, Any]:
        """The failing provider first on every request: the request names the order, as
        the gateway would otherwise learn to put a failing provider last. Restarts api
        and worker with a bigger catalog, so it runs last."""
        rate, seconds = 20, self.scale(10)
        # A circuit opens after 5 failures of one model at one provider, and each request
        # fails twice there (a retry, then the fallback): two requests per model copy.
        models = int((seconds + 1) * rate / 2) + 1
        self.stack.use_failover_catalog(models)
        bodies = [
            chat_body("Say hello.", model=failover_model(i), provider=FAILOVER_ORDER)
            for i in range(models)
        ]
        load = {
            "mode": "open",
            "rate": rate,
            "warmup_s": 1,
            "duration_s": seconds,
            "bodies": bodies,
        }
        direct = self.measure(self.direct(**load))
        self.stack.reset_fake_stats()
        gateway = self.measure(self.gateway(**load))
        failed_first = int(self.stack.fake_stats().get("failed", 0))
        return {
            "direct": direct,
            "gateway": gateway,
            "added_ms": _added(direct["latency_ms"], gateway["latency_ms"]),
            "failed_first_attempts": failed_first,
            "failed_calls_per_request": round(failed_first / max(gateway["all_requests"], 1), 2),
        }

    # -- S7 ----------------------------------------------------------------------------

    def s7_bad_key_flood(self, s1_gateway_rps: float) -> dict[str, Any]:
        load = s7_load()
        direct = self.measure(self.direct(**load, duration_s=self.scale(10)))
        gateway = self.measure(self.gateway(**load, duration_s=self.scale(10)))
        # What one refused key costs the gateway, measured alone.
        # 401, or 429 once the api rations lookups of unknown keys.
        bad_only = self.measure(self.gateway(**refusal_load(self.scale(5), [401, 429])))
        good_rps = gateway["good"]["rps"]
        return {
            "direct": direct,
            "gateway": gateway,
            "gateway_bad_keys_only": bad_only,
            "s1_gateway_rps": s1_gateway_rps,
            "good_rps_under_flood": good_rps,
            "good_loss": round(1 - good_rps / s1_gateway_rps, 3) if s1_gateway_rps else None,
        }

    # -- the design floor --------------------------------------------------------------

    def floor(self) -> dict[str, Any]:
        """S1, S2 at 100 req/s, S3, S7 and lone refusals through bench/floor.py's floor
        (the required shape with no features), and S1-S3 through its proxy (no queue), on
        the gateway's CPU beside this run's gateway. S2 and S3 get their own direct runs,
        each taken just before the proxy's and the floor's."""
        floor_url, proxy_url = self.stack.start_floor()

        def at(url: str, **spec: Any) -> dict[str, Any]:
            return {
                "url": f"{url}/v1/chat/completions",
                "headers": {"authorization": f"Bearer {FLOOR_KEY}"},
                **spec,
            }

        def measure(url: str, load: dict[str, Any], seconds: float) -> dict[str, Any]:
            charged = (
                ("floor-proxy",) if url == proxy_url else ("floor-edge", "floor-worker", "redis")
            )
            return self.measure(at(url, **load, duration_s=self.scale(seconds)), charged=charged)

        out: dict[str, Any] = {"proxy": {}}
        try:
            for url in (floor_url, proxy_url):
                for spec in (
                    at(url, mode="closed", body=chat_body("warm up"), connections=4, duration_s=1),
                    at(url, **{**s3_load(), "connections": 4, "warmup_s": 0, "duration_s": 1}),
                ):
                    loadgen.run(spec, cpu=self.cpu)
            out["S1"] = measure(floor_url, s1_load(), 10)
            out["proxy"]["S1"] = measure(proxy_url, s1_load(), 10)
            for name, load, key, added in (
                ("S2", s2_load(100), "latency_ms", "added_ms"),
                ("S3", s3_load(), "ttft_ms", "added_ttft_ms"),
            ):
                direct = self.measure(self.direct(**load, duration_s=self.scale(10)))
                for label, url, into in (
                    ("proxy", proxy_url, out["proxy"]),
                    ("floor", floor_url, out),
                ):
                    result = measure(url, load, 10)
                    into[name] = {
                        "direct": direct,
                        label: result,
                        added: _added(direct[key], result[key]),
                    }
            s7 = measure(floor_url, s7_load(), 10)
            rps = out["S1"]["rps"]
            out["S7"] = {
                "floor": s7,
                "good_loss": round(1 - s7["good"]["rps"] / rps, 3) if rps else None,
            }
            out["refusals"] = self.measure(
                at(floor_url, **refusal_load(self.scale(5), [401])), charged=("floor-edge",)
            )
        finally:
            self.stack.stop_floor()
        return out


class _RssSampler:
    """Samples the services' RSS every 250 ms during a load; also once at ALL_OPEN."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.peak: dict[str, int] = {}
        self.at_marker: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._sample()

    def _sample(self) -> dict[str, int]:
        now = self.stack.rss()
        for name, value in now.items():
            self.peak[name] = max(self.peak.get(name, 0), value)
        return now

    def marker(self, line: str) -> None:
        if line.strip() == "ALL_OPEN" and not self.at_marker:
            self.at_marker = self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def _per_request_calls(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], n: int
) -> dict[str, float]:
    """Redis commands per request, busiest first (the INFO call itself left out)."""
    calls = {
        name: (count - before.get(name, (0, 0))[0]) / n
        for name, (count, _usec) in after.items()
        if name not in {"info"}
    }
    ranked = sorted(
        ((k, round(v, 2)) for k, v in calls.items() if v >= 0.01), key=lambda kv: -kv[1]
    )
    return {"total": round(sum(calls.values()), 2), **dict(ranked)}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _added(direct: dict[str, Any], gateway: dict[str, Any]) -> dict[str, float]:
    return {
        q: round(gateway[q] - direct[q], 3)
        for q in ("p50", "p90", "p99", "mean")
        if q in direct and q in gateway
    }
