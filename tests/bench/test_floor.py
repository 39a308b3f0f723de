"""The design floor (bench/floor.py), for real: its edge, worker and proxy processes on
the test Redis, in front of the fast fake upstream.

The benchmark reads the floor's numbers as what the required shape costs with no
features, so it must really do the whole trip (queue, worker, upstream, reply channel)
and relay what the upstream said, whole or piece by piece.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis as sync_redis

from bench import floor, loadgen
from bench.scenarios import chat_body
from bench.stack import REPO
from services.runner import free_port, wait_for_port
from tests.bench.conftest import post
from tests.conftest import DEFAULT_TEST_REDIS_URL

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")

KEY = "floor-test-key"
REDIS_URL = os.environ.get("TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)


@pytest.fixture(scope="module")
def floor_urls(fake_url: str) -> Iterator[dict[str, str]]:
    client = sync_redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    ports = {"edge": free_port(), "proxy": free_port()}
    roles = floor.commands(
        sys.executable,
        redis_url=REDIS_URL,
        upstream=f"{fake_url}/v1/chat/completions",
        upstream_key="upstream-key",
        key=KEY,
        edge_port=ports["edge"],
        proxy_port=ports["proxy"],
    )
    procs = [
        subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        for argv in roles.values()
    ]
    try:
        for port in ports.values():
            assert wait_for_port(port, 20), "the floor did not start"
        yield {name: f"http://127.0.0.1:{port}/v1/chat/completions" for name, port in ports.items()}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        client.flushdb()
        client.close()


@pytest.mark.parametrize("via", ["edge", "proxy"])
def test_relays_the_upstream_answer(floor_urls: dict[str, str], via: str) -> None:
    status, text = post(
        floor_urls[via], chat_body("[[fake:chunks=3]] hi"), {"authorization": f"Bearer {KEY}"}
    )
    assert status == 200
    answer = json.loads(text)
    assert answer["choices"][0]["message"]["content"] == "c0 c1 c2 "


@pytest.mark.parametrize("via", ["edge", "proxy"])
def test_streams_arrive_whole_and_in_order(floor_urls: dict[str, str], via: str) -> None:
    result = loadgen.run(
        {
            "url": floor_urls[via],
            "headers": {"authorization": f"Bearer {KEY}"},
            "mode": "stream",
            "body": chat_body("[[fake:ttft_ms=10,chunks=5,chunk_delay_ms=2]] hi", stream=True),
            "connections": 3,
            "duration_s": 0.5,
            "expect_chunks": 5,
        },
        cpu=None,
        timeout_s=30,
    )
    assert result["streams"] > 0 and result["faithful"] == result["streams"]
    assert result["errors"] == 0


@pytest.mark.parametrize("via", ["edge", "proxy"])
def test_refuses_a_wrong_key_and_a_body_that_is_not_json(
    floor_urls: dict[str, str], via: str
) -> None:
    status, text = post(floor_urls[via], chat_body("hi"), {"authorization": "Bearer nope"})
    assert status == 401 and json.loads(text)["error"]["type"] == "invalid_request_error"
    status, _ = post(floor_urls[via], "{not json", {"authorization": f"Bearer {KEY}"})
    assert status == 400


def test_the_worker_acknowledges_every_job(floor_urls: dict[str, str]) -> None:
    for _ in range(3):
        assert (
            post(floor_urls["edge"], chat_body("hi"), {"authorization": f"Bearer {KEY}"})[0] == 200
        )
    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        assert client.xlen(floor.JOBS) >= 3
        # The worker acknowledges right after it publishes, so just after the client
        # has its answer.
        deadline = time.monotonic() + 5
        while client.xpending(floor.JOBS, floor.GROUP)["pending"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.xpending(floor.JOBS, floor.GROUP)["pending"] == 0
    finally:
        client.close()
