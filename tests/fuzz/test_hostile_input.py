"""Hand-written hostile input: every answer is a 4xx in OpenAI's format, never a 5xx,
and nothing is queued, held or billed."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import orjson
import pytest

from tests.fuzz.cases import Case, cases, raw_cases
from tests.fuzz.conftest import FuzzEnv, count_inputs, snapshot
from tests.oracles import validate_openai

MAX_BODY_BYTES = 4 * 1024 * 1024  # the fuzz stack's MAX_BODY_BYTES
CASES = cases(MAX_BODY_BYTES)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_refused_with_openai_error_and_no_state_change(fuzz_env: FuzzEnv, case: Case) -> None:
    stack = fuzz_env.stack
    headers = {"Content-Type": "application/json", **case.headers}
    if case.auth:
        headers["Authorization"] = f"Bearer {fuzz_env.key}"
    before = await snapshot(stack)
    async with (
        aiohttp.ClientSession() as http,
        http.post(stack.api_url + case.path, data=case.body, headers=headers) as resp,
    ):
        status, raw = resp.status, await resp.read()
    count_inputs([status])
    assert 400 <= status < 500, f"{case.name}: {status} {raw[:300]!r}"
    if case.status is not None:
        assert status == case.status, raw[:300]
    validate_openai("ErrorResponse", orjson.loads(raw))
    after = await snapshot(stack)
    assert after == before, f"{case.name} changed state: {before} -> {after}"


def _send_raw(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


@pytest.mark.timeout(120)
async def test_header_injection_and_smuggling_are_4xx(fuzz_env: FuzzEnv) -> None:
    """Requests no HTTP library would send: CR/LF/NUL in headers, huge headers,
    conflicting lengths. Each gets a 4xx (or, for the one harmless reading, a refusal of
    the bad key), never a 5xx, and nothing is queued."""
    stack = fuzz_env.stack
    port = int(stack.api_url.rsplit(":", 1)[1])
    before = await snapshot(stack)
    statuses: dict[str, int] = {}
    plain: list[str] = []
    for name, payload in raw_cases(port, fuzz_env.key):
        answer = await asyncio.to_thread(_send_raw, port, payload)
        head, _, body = answer.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1."), f"{name}: no HTTP answer: {answer[:200]!r}"
        statuses[name] = int(status_line.split()[1])
        if b"application/json" in head.lower():
            validate_openai("ErrorResponse", orjson.loads(body))
        else:
            # aiohttp's HTTP parser refuses these before the app sees them (text/plain).
            plain.append(name)
    count_inputs(list(statuses.values()))
    print("raw header cases:", statuses, "answered by the HTTP parser:", plain)
    assert all(400 <= s < 500 for s in statuses.values()), statuses
    assert await snapshot(stack) == before
