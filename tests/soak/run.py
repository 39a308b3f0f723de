"""`make soak`: minutes of mixed traffic through real processes, with failing providers.

    python -m tests.soak.run --seconds 300 [--concurrency 8] [--report soak.json]

The gateway (api, 2 workers, billing) runs on a private PostgreSQL cluster and Redis
server, with one model (`duo`) offered by two fake providers, `alpha` (cheaper, tried
first) and `beta`. The traffic is half streaming, some of it slow, and:

- about 10% of requests carry `[[fake:status=500]]`, which both providers obey: those
  are the injected failures, the only ones allowed to fail;
- `alpha` is also scripted to fail a few requests every couple of seconds, which then
  fall back to `beta` and must succeed.

It reports the error rate (and any error outside the injected ones), how many requests
fell back, the resident memory of every service at the start and end (and every 30 s),
and ends with the ledger audit. Exit status 0 only when no unexpected error happened
and the audit is clean. Traffic goes to 127.0.0.1 only and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.audit import audit, wait_settled
from tests.faults.harness import FaultStack, fault_stack, servers
from tests.faults.load import PROMPT_CANARY, LoadReport, Mix, Seen, run_load
from tests.faults.servers import missing_requirements

CATALOG = """
providers:
  alpha: {adapter: openai, base_url: "http://unused", key_env: API_KEY_ALPHA}
  beta: {adapter: openai, base_url: "http://unused", key_env: API_KEY_BETA}
models:
  - id: duo
    capabilities: [tools, json, streaming]
    offers:
      - {provider: alpha, upstream_model: duo-alpha, input: "1.00", output: "2.00"}
      - {provider: beta, upstream_model: duo-beta, input: "3.00", output: "4.00"}
"""
SERVICES = ("api", "worker-1", "worker-2", "billing")
INJECTED = "[[fake:status=500]]"


def _prompt(rng: random.Random, index: int) -> str:
    text = f"soak {index} {PROMPT_CANARY}"
    roll = rng.random()
    if roll < 0.10:
        return f"{text} {INJECTED}"
    if roll < 0.30:
        return f"{text} [[fake:chunks=12,chunk_delay_ms=25]]"
    return text


def _post(url: str, body: object) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=5):
        pass


def _delete(url: str) -> None:
    with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=5):
        pass


async def _chaos(stack: FaultStack, stop: asyncio.Event) -> None:
    """Every 2 s: alpha fails its next 3 requests; old call records are dropped."""
    alpha = stack.fake_url
    while not stop.is_set():
        await asyncio.to_thread(_post, alpha + "/_fake/script", [{"status": 500}] * 3)
        for url in (alpha, *stack.extra_fakes.values()):
            await asyncio.to_thread(_delete, url + "/_fake/calls")
        try:
            await asyncio.wait_for(stop.wait(), 2.0)
        except TimeoutError:
            pass


async def _sample_rss(stack: FaultStack, stop: asyncio.Event, samples: list[dict[str, Any]]) -> None:
    started = time.monotonic()
    while True:
        samples.append(
            {"t_s": round(time.monotonic() - started), **{n: stack.rss_bytes(n) for n in SERVICES}}
        )
        try:
            await asyncio.wait_for(stop.wait(), 30.0)
            return
        except TimeoutError:
            pass


async def soak(stack: FaultStack, seconds: float, concurrency: int) -> dict[str, Any]:
    keys = [(await stack.funded_user("1000"))[1] for _ in range(4)]
    mix = Mix(model="duo", stream_fraction=0.5, prompt=_prompt)
    warm = await run_load(stack.api_url, keys, max_requests=40, concurrency=concurrency, mix=mix)
    await wait_settled(stack.redis_url, timeout_s=60)
    rss_start = {name: stack.rss_bytes(name) for name in SERVICES}

    stop = asyncio.Event()
    samples: list[dict[str, Any]] = []
    side = [
        asyncio.create_task(_chaos(stack, stop)),
        asyncio.create_task(_sample_rss(stack, stop, samples)),
    ]
    report = LoadReport()
    started = time.monotonic()
    await run_load(
        stack.api_url, keys, max_requests=2_000_000, concurrency=concurrency,
        duration_s=seconds, mix=mix, report=report, seed=11,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    stop.set()
    await asyncio.gather(*side)
    rss_end = {name: stack.rss_bytes(name) for name in SERVICES}

    await wait_settled(stack.redis_url, timeout_s=120)
    seen: list[Seen] = [*warm.seen, *report.seen]
    ledger = await audit(stack.pg_dsn, stack.redis_url, seen)

    injected = [s for s in report.seen if INJECTED in s.prompt]
    unexpected = [s for s in report.seen if not s.ok and INJECTED not in s.prompt]
    injected_ok = [s for s in injected if s.ok]
    fallbacks = [s for s in report.seen if s.ok and s.attempts > 1]
    providers: dict[str, int] = {}
    for s in report.ok:
        providers[s.provider or "?"] = providers.get(s.provider or "?", 0) + 1
    return {
        "seconds": round(elapsed, 1),
        "concurrency": concurrency,
        "requests": len(report.seen),
        "requests_per_s": round(len(report.seen) / elapsed, 1),
        "streaming": sum(1 for s in report.seen if s.stream),
        "ok": len(report.ok),
        "errors": len(report.errors),
        "error_rate": round(len(report.errors) / max(len(report.seen), 1), 4),
        "injected_failures": len(injected),
        "injected_but_succeeded": len(injected_ok),
        "unexpected_errors": len(unexpected),
        "unexpected_examples": [
            {"status": s.status, "kind": s.error_kind, "error": s.error} for s in unexpected[:5]
        ],
        "fell_back_and_succeeded": len(fallbacks),
        "served_by": providers,
        "statuses": report.statuses(),
        "rss_start_mb": {n: round(v / 1e6, 1) for n, v in rss_start.items()},
        "rss_end_mb": {n: round(v / 1e6, 1) for n, v in rss_end.items()},
        "rss_samples_mb": [
            {k: (round(v / 1e6, 1) if k != "t_s" else v) for k, v in s.items()} for s in samples
        ],
        "audit": {"discrepancies": ledger.discrepancies, "problems": ledger.problems[:20], **ledger.counts},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--report", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    reason = missing_requirements()
    if reason:
        print(f"soak cannot run: {reason}", file=sys.stderr)
        return 2
    overrides = {
        "API_KEY_ALPHA": "soak-alpha-upstream-key",
        "API_KEY_BETA": "soak-beta-upstream-key",
        "BASE_URL_ALPHA": "{fake}/v1",
        "BASE_URL_BETA": "{fake2}/v1",
        "PROVIDER_MAX_RETRIES": "0",
        "REQUEST_TIMEOUT_SECONDS": "30",
        # The injected failures are sparse and random; a breaker that opened on them
        # would turn them into refusals of healthy requests (see the README text).
        "CIRCUIT_FAILURE_THRESHOLD": "50",
    }
    with servers() as (pg, redis), fault_stack(
        pg, redis, workers=2, catalog_yaml=CATALOG, env_overrides=overrides, extra_fakes=1
    ) as stack:
        figures = asyncio.run(soak(stack, args.seconds, args.concurrency))
        figures["logs"] = str(stack.log_dir)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.report:
        args.report.write_text(text)
    clean = figures["unexpected_errors"] == 0 and figures["audit"]["discrepancies"] == 0
    print("soak:", "PASS" if clean else "FAIL", file=sys.stderr)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
