"""The bundled Redis as `gateway run all` and the benchmark start it: a real server,
append-only, under batch scheduling (see services/embedded_redis.py for why)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import redis as sync_redis

from services import embedded_redis
from services.runner import free_port, wait_for_port


def test_the_bundled_server_runs_append_only_under_batch_scheduling(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        embedded_redis.command(port, tmp_path, ["--logfile", str(tmp_path / "redis.log")]),
        stdin=subprocess.DEVNULL,
    )
    try:
        assert embedded_redis.prefer_batching(proc.pid)
        assert wait_for_port(port, 10)
        assert os.sched_getscheduler(proc.pid) == os.SCHED_BATCH
        client = sync_redis.Redis(port=port)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.set("k", "v") and client.get("k") == b"v"
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_refused_policy_change_is_reported_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    assert embedded_redis.prefer_batching(2**22 + 12345) is False  # no such process
    assert "redis_batch_scheduling_unavailable" in capsys.readouterr().out
