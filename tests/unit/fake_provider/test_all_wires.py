"""Behaviour every wire format shares: failure directives, timing, script, auth, recording."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.unit.fake_provider.conftest import Start, calls, read_cut_stream
from tests.unit.fake_provider.wirecases import CASES, MODEL, WireCase

pytestmark = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


async def post(
    http: aiohttp.ClientSession,
    server: TestServer,
    case: WireCase,
    text: str,
    *,
    stream: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    async with http.post(
        server.make_url(case.path(stream=stream)),
        data=orjson.dumps(case.body(text, stream=stream)),
        headers=case.headers if headers is None else headers,
    ) as resp:
        raw = await resp.read()
    return resp.status, raw, resp


class TestStreams:
    async def test_complete_stream(
        self, case: WireCase, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        status, raw, resp = await post(http, server, case, "Hi", stream=True)
        assert status == 200 and resp.content_type == "text/event-stream"
        assert case.count_content(raw) == 8
        assert case.end_marker in raw and case.error_marker not in raw
        assert raw.endswith(case.separator)

    async def test_drop_after(
        self, case: WireCase, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        async with http.post(
            server.make_url(case.path(stream=True)),
            data=orjson.dumps(case.body("[[fake:drop_after=3]]", stream=True)),
            headers=case.headers,
        ) as resp:
            assert resp.status == 200
            raw = await read_cut_stream(resp)
        assert case.count_content(raw) == 3
        assert case.end_marker not in raw

    async def test_drop_without_stream_cuts_the_connection(
        self, case: WireCase, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        with pytest.raises(aiohttp.ClientError):
            await post(http, server, case, "[[fake:drop_after=0]]")

    async def test_error_event_after(
        self, case: WireCase, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        status, raw, _ = await post(http, server, case, "[[fake:error_event_after=2]]", stream=True)
        assert status == 200
        assert case.count_content(raw) == 2
        assert raw.count(case.error_marker) == 1
        assert case.end_marker not in raw
        assert raw.split(case.separator)[-2].startswith(case.error_marker)

    async def test_ttft_and_chunk_delay(
        self, case: WireCase, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        started = time.monotonic()
        status, raw, _ = await post(
            http, server, case, "[[fake:ttft_ms=60,chunks=4,chunk_delay_ms=10]]", stream=True
        )
        elapsed = time.monotonic() - started
        assert status == 200 and case.count_content(raw) == 4
        assert elapsed >= 0.9 * (0.06 + 3 * 0.01)

    async def test_hang_until_the_client_leaves(
        self, case: WireCase, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(post(http, server, case, "[[fake:hang]]", stream=True), 0.2)
        status, _, _ = await post(http, server, case, "Hi")
        assert status == 200


class TestFailures:
    @pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503, 529])
    async def test_status(
        self, case: WireCase, status: int, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        for stream in (False, True):
            got, raw, resp = await post(
                http, server, case, f"[[fake:status={status}]]", stream=stream
            )
            assert got == status and resp.content_type == "application/json"
            assert "error" in orjson.loads(raw)

    async def test_retry_after_header(
        self, case: WireCase, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        status, _, resp = await post(http, server, case, "[[fake:status=503,retry_after=2.5]]")
        assert status == 503 and resp.headers["retry-after"] == "2.5"

    async def test_directive_in_content_parts(
        self, case: WireCase, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        body = case.body("Hello")
        part = {"text": "and [[fake:status=418]] then"}
        if case.name == "gemini":
            body["contents"][-1]["parts"].append(part)
        else:
            body["messages"][-1]["content"] = [
                {"type": "text", "text": "x"},
                {"type": "text", **part},
            ]
        async with http.post(
            server.make_url(case.path(stream=False)), json=body, headers=case.headers
        ) as resp:
            assert resp.status == 418

    async def test_bad_directive(
        self, case: WireCase, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        status, raw, _ = await post(http, server, case, "[[fake:bogus=1]]")
        assert status == 400 and "bogus" in orjson.loads(raw)["error"]["message"]


class TestScriptAndAuth:
    async def test_queued_step_for_one_wire(
        self, case: WireCase, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        others = [c.name for c in CASES if c.name != case.name]
        steps = [{"wire": name, "status": 500} for name in others] + [
            {"wire": case.name, "model": MODEL, "status": 529}
        ]
        async with http.post(server.make_url("/_fake/script"), json=steps) as resp:
            assert resp.status == 200
        assert (await post(http, server, case, "Hi"))[0] == 529
        assert (await post(http, server, case, "Hi"))[0] == 200
        async with http.get(server.make_url("/_fake/script")) as resp:
            assert [s["wire"] for s in await resp.json()] == others

    async def test_missing_credentials(
        self, case: WireCase, start: Start, http: aiohttp.ClientSession
    ) -> None:
        server = await start()
        headers = {k: v for k, v in case.headers.items() if k == "anthropic-version"}
        status, raw, _ = await post(http, server, case, "Hi", headers=headers)
        assert status == 401 and "error" in orjson.loads(raw)
        open_server = await start(require_auth=False)
        assert (await post(http, open_server, case, "Hi", headers=headers))[0] == 200

    async def test_recorded_without_credentials(
        self, case: WireCase, server: TestServer, http: aiohttp.ClientSession
    ) -> None:
        url = server.make_url(case.path(stream=False))
        if case.name == "gemini":
            url = url.update_query(key="AIza-in-query")
        async with http.post(
            url, json=case.body("Hi"), headers={**case.headers, "X-Trace": "t1"}
        ) as resp:
            assert resp.status == 200
        [call] = await calls(http, server)
        assert call["wire"] == case.name
        assert call["model"] == MODEL
        assert call["path"] == case.path(stream=False)
        assert call["has_auth"] is True
        assert call["headers"]["X-Trace"] == "t1"
        assert call["body"] == case.body("Hi")
        dumped = orjson.dumps(call).decode().lower()
        for secret in ("sk-fake", "sk-ant-fake", "aiza", "authorization", "x-api-key"):
            assert secret not in dumped
