"""The api process dies or stops with streams open; a client reads its stream slowly."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import orjson
import pytest

from tests.audit import wait_settled
from tests.faults.checks import assert_clean_outcomes, log_events, wait_for
from tests.faults.conftest import count_fault
from tests.faults.harness import FaultStack
from tests.faults.load import LoadReport, Mix, Seen, run_load

pytestmark = pytest.mark.timeout(150)

LONG_STREAM = "[[fake:chunks=40,chunk_delay_ms=100]]"  # 4 s of generation


async def test_kill_9_api_cancels_upstream_and_bills_what_was_generated(
    fstack: FaultStack, settled_audit: list[Seen]
) -> None:
    """With the api gone, the worker's next PUBLISH reaches nobody: the job is cancelled
    (upstream call closed) and billed for what was generated, not for a whole answer."""
    _user, key = await fstack.funded_user("50")
    mix = Mix(stream_fraction=1.0)
    mix.prompt = lambda _rng, i: f"long {i} {LONG_STREAM}"
    reference = await run_load(fstack.api_url, [key], max_requests=1, concurrency=1, mix=mix)
    settled_audit.extend(reference.seen)
    assert reference.seen[0].ok
    report = LoadReport()
    load = asyncio.create_task(
        run_load(fstack.api_url, [key], max_requests=6, concurrency=6, mix=mix, report=report)
    )
    # Streams have begun once their headers (and x-request-id) reached the client.
    await wait_for(lambda: sum(1 for s in report.seen if s.request_id) == 6, 10, "streams")
    await asyncio.sleep(0.8)  # about a quarter of each answer generated
    fstack.kill("api")
    await load
    settled_audit.extend(report.seen)
    count_fault(report.seen)
    assert all(s.error_kind == "connection" for s in report.seen), report.statuses()

    await wait_settled(fstack.redis_url, timeout_s=30)
    full = await fstack.query(
        "SELECT completion_tokens, cost_nusd FROM usage_records WHERE request_id = $1",
        reference.seen[0].request_id,
    )
    cut = await fstack.query(
        "SELECT request_id, status, completion_tokens, cost_nusd FROM usage_records "
        "WHERE request_id = ANY($1::text[])",
        [s.request_id for s in report.seen if s.request_id],
    )
    print(f"kill -9 api: full answer {dict(full[0])}; cut: {[dict(r) for r in cut]}")
    assert len(cut) == len([s for s in report.seen if s.request_id]) > 0
    for row in cut:
        assert row["status"] == "cancelled", dict(row)
        assert 0 < row["completion_tokens"] < full[0]["completion_tokens"], dict(row)
        assert row["cost_nusd"] < full[0]["cost_nusd"], dict(row)
    cancelled = {
        orjson.loads(line).get("request_id")
        for name in ("worker-1", "worker-2")
        for line in log_events(fstack.log_dir / f"{name}.log", "job_cancelled")
    }
    assert {row["request_id"] for row in cut} <= cancelled


async def test_sigterm_api_finishes_open_streams(
    fstack: FaultStack, settled_audit: list[Seen]
) -> None:
    """SIGTERM: the api stops accepting, lets the streams in flight finish, exits 0."""
    _user, key = await fstack.funded_user("50")
    mix = Mix(stream_fraction=0.7)
    mix.prompt = lambda _rng, i: f"graceful {i} [[fake:chunks=20,chunk_delay_ms=60]]"
    report = LoadReport()
    load = asyncio.create_task(
        run_load(fstack.api_url, [key], max_requests=8, concurrency=8, mix=mix, report=report)
    )
    await wait_for(lambda: len(report.seen) == 8, 10, "requests sent")
    await asyncio.sleep(0.4)
    proc = fstack.signal("api", signal.SIGTERM)
    await load
    exit_code = await asyncio.to_thread(proc.wait, 60)
    settled_audit.extend(report.seen)
    count_fault(report.seen)
    print("SIGTERM api:", report.statuses())
    assert exit_code == 0
    assert all(s.ok for s in report.seen), report.statuses()
    assert_clean_outcomes(report.seen)


SLOW_REPLY_WORDS = 150_000  # 600 kB of text, cut into 6,000 chunks: ~1.9 MB of SSE


def _raw_stream_request(port: int, key: str, prompt: str) -> socket.socket:
    body = orjson.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small receive window: the backlog stays in the gateway, not in our kernel.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


async def test_slow_reader_blocks_no_worker_and_memory_stays_bounded(
    fstack: FaultStack, settled_audit: list[Seen]
) -> None:
    """A client that reads a long stream very slowly: the worker finishes its job at
    upstream speed (billed while the client still reads), other requests are served
    meanwhile, and the api's memory grows by no more than the unread answer."""
    _user, key = await fstack.funded_user("50")
    warm = await run_load(fstack.api_url, [key], max_requests=10, concurrency=5)
    settled_audit.extend(warm.seen)
    rss_before = fstack.rss_bytes("api")
    reply = " ".join(["tok"] * SLOW_REPLY_WORDS)
    prompt = f"[[fake:chunks=6000,reply={reply}]]"
    port = int(fstack.api_url.rsplit(":", 1)[1])
    sock = await asyncio.to_thread(_raw_stream_request, port, key, prompt)
    try:
        first = await asyncio.to_thread(sock.recv, 2048)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        request_id = next(
            line.split(b":", 1)[1].strip().decode()
            for line in first.split(b"\r\n")
            if line.lower().startswith(b"x-request-id:")
        )
        # The worker finishes and billing settles while the client has read ~2 kB.
        settled: list[object] = []

        async def billed() -> bool:
            rows = await fstack.query(
                "SELECT status FROM usage_records WHERE request_id = $1", request_id
            )
            settled.extend(rows)
            return bool(rows)

        deadline = time.monotonic() + 30
        while not await billed():
            assert time.monotonic() < deadline, "the worker did not finish the slow stream"
            await asyncio.sleep(0.2)
        others = await run_load(fstack.api_url, [key], max_requests=10, concurrency=5)
        settled_audit.extend(others.seen)
        rss_peak = fstack.rss_bytes("api")

        received = len(first)
        chunks = [first]
        while True:
            data = await asyncio.to_thread(sock.recv, 65536)
            if not data:
                break
            received += len(data)
            chunks.append(data)
    finally:
        sock.close()
    tail = b"".join(chunks[-3:])
    growth = rss_peak - rss_before
    print(
        f"slow reader: answer {received / 1e6:.2f} MB of SSE; api RSS {rss_before / 1e6:.1f} MB "
        f"-> {rss_peak / 1e6:.1f} MB with the answer unread (+{growth / 1e6:.1f} MB)"
    )
    assert all(s.ok for s in others.seen), others.statuses()
    assert b"data: [DONE]" in tail, "the slow stream did not end cleanly"
    assert received > 1_500_000
    # Bounded by the unread answer (kept once, as frames), plus allocator slack.
    assert growth < 3 * received + 32_000_000, growth
    assert_clean_outcomes([*warm.seen, *others.seen])
