"""Shared by the benchmark's tests: the fast fake upstream, started for real, and a client."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from bench.stack import NODE_DIR
from services.runner import free_port, wait_for_port

AUTH = {"authorization": "Bearer upstream-key"}


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        ["node", str(NODE_DIR / "fake_upstream.mjs"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_port(port, 10), "the fake upstream did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def post(url: str, body: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=body.encode(),
        method="POST",
        headers={"content-type": "application/json", **(AUTH if headers is None else headers)},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
