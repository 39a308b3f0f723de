from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.fake_provider.app import DEFAULT_REPLY, STATE, FakeConfig, create_app
from services.worker import upstream
from services.worker.providers import REGISTRY
from services.worker.providers.base import ChatRequest, StreamDelta, Target
from shared.catalog import Offer, ProviderConfig
from shared.errors import FinalProviderError, ProviderError, RetryableProviderError
from shared.messages import Usage
from shared.money import Price
from tests.oracles import validate_openai, validate_openai_request

ADAPTER = REGISTRY["openai"]
FAST = upstream.Timeouts(connect_s=1.0, first_byte_s=2.0, idle_s=2.0)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_target(base_url: str, *, api_key: str = "sk-test") -> Target:
    return Target(
        model_id="demo",
        provider=ProviderConfig(name="fake", adapter="openai", base_url=base_url),
        offer=Offer(provider="fake", upstream_model="fake-up", price=Price(Decimal(1), Decimal(2))),
        api_key=api_key,
        base_url=base_url,
    )


def make_request(text: str = "Hello there", *, stream: bool, **extra: Any) -> ChatRequest:
    body: dict[str, Any] = {
        "model": "demo",
        "messages": [{"role": "user", "content": text}],
        **extra,
    }
    if stream:
        body["stream"] = True
    return ChatRequest(body=body, stream=stream, include_usage=False)


@pytest.fixture
async def fake() -> AsyncIterator[TestServer]:
    server = TestServer(create_app(FakeConfig()))
    async with server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with upstream.create_client_session() as s:
        yield s


def base_url(server: TestServer) -> str:
    return str(server.make_url("/v1"))


async def collect(
    session: aiohttp.ClientSession,
    server_url: str,
    req: ChatRequest,
    timeouts: upstream.Timeouts = FAST,
    **target_kw: Any,
) -> list[StreamDelta]:
    target = make_target(server_url, **target_kw)
    return [d async for d in upstream.stream(session, ADAPTER, target, req, timeouts)]


def text_of(deltas: list[StreamDelta]) -> str:
    return "".join(c["delta"].get("content") or "" for d in deltas for c in d.choices)


class TestComplete:
    async def test_non_streaming_round_trip(
        self, fake: TestServer, session: aiohttp.ClientSession
    ) -> None:
        target = make_target(base_url(fake))
        completion = await upstream.complete(
            session, ADAPTER, target, make_request(stream=False), FAST
        )
        assert completion.choices[0]["message"]["content"] == DEFAULT_REPLY
        assert completion.choices[0]["finish_reason"] == "stop"
        assert completion.usage == Usage(prompt_tokens=2 + 4, completion_tokens=8)
        assert completion.extra == {"system_fingerprint": "fp_fake", "service_tier": "default"}
        [call] = fake.app[STATE].calls
        assert call["has_auth"] and "Authorization" not in call["headers"]
        assert call["body"]["model"] == "fake-up"
        validate_openai_request(call["body"], stream=False)
        validate_openai("CreateChatCompletionRequest", call["body"])

    async def test_status_errors_are_classified(
        self, fake: TestServer, session: aiohttp.ClientSession
    ) -> None:
        target = make_target(base_url(fake))
        with pytest.raises(RetryableProviderError) as info:
            await upstream.complete(
                session,
                ADAPTER,
                target,
                make_request("[[fake:status=429,retry_after=3]]", stream=False),
                FAST,
            )
        assert (info.value.upstream_status, info.value.retry_after_s) == (429, 3.0)
        assert info.value.provider == "fake"
        with pytest.raises(FinalProviderError) as final:
            await upstream.complete(
                session, ADAPTER, target, make_request("[[fake:status=400]]", stream=False), FAST
            )
        assert final.value.http_status == 400

    async def test_missing_key_is_an_operator_error(
        self, fake: TestServer, session: aiohttp.ClientSession
    ) -> None:
        target = make_target(base_url(fake), api_key="")
        with pytest.raises(FinalProviderError) as info:
            await upstream.complete(session, ADAPTER, target, make_request(stream=False), FAST)
        assert (info.value.http_status, info.value.code) == (502, "upstream_auth_error")

    async def test_slow_answer_times_out(
        self, fake: TestServer, session: aiohttp.ClientSession
    ) -> None:
        timeouts = upstream.Timeouts(connect_s=1.0, first_byte_s=0.2, idle_s=1.0)
        started = time.monotonic()
        with pytest.raises(RetryableProviderError) as info:
            await upstream.complete(
                session,
                ADAPTER,
                make_target(base_url(fake)),
                make_request("[[fake:ttft_ms=3000]]", stream=False),
                timeouts,
            )
        assert info.value.code == "timeout"
        assert time.monotonic() - started < 1.0

    async def test_dropped_connection(
        self, fake: TestServer, session: aiohttp.ClientSession
    ) -> None:
        with pytest.raises(RetryableProviderError) as info:
            await upstream.complete(
                session,
                ADAPTER,
                make_target(base_url(fake)),
                make_request("[[fake:drop_after=0]]", stream=False),
                FAST,
            )
        assert info.value.code == "connection_error"

    async def test_connection_refused(self, session: aiohttp.ClientSession) -> None:
        with socket.socket() as sock:  # a port that is certainly closed
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with pytest.raises(RetryableProviderError) as info:
            await upstream.complete(
                session,
                ADAPTER,
                make_target(f"http://127.0.0.1:{port}/v1"),
                make_request(stream=False),
                FAST,
            )
        assert info.value.code == "connection_error"
        assert isinstance(info.value.__cause__, aiohttp.ClientError)


class TestStream:
    async def test_stream_round_trip_asks_for_usage(
        self, fake: TestServer, session: aiohttp.ClientSession
    ) -> None:
        deltas = await collect(session, base_url(fake), make_request(stream=True))
        assert text_of(deltas) == DEFAULT_REPLY
        assert deltas[0].choices[0]["delta"]["role"] == "assistant"
        assert [d.usage for d in deltas if d.usage] == [Usage(6, 8)]
        reasons = [c["finish_reason"] for d in deltas for c in d.choices if c["finish_reason"]]
        assert reasons == ["stop"]
        [call] = fake.app[STATE].calls
        assert call["body"]["stream_options"] == {"include_usage": True}
        validate_openai_request(call["body"], stream=True)
        validate_openai("CreateChatCompletionRequest", call["body"])

    async def test_connection_is_reused_after_a_clean_stream(
        self, session: aiohttp.ClientSession
    ) -> None:
        peers: list[object] = []

        @web.middleware
        async def peer(request: web.Request, handler: Handler) -> web.StreamResponse:
            assert request.transport is not None
            peers.append(request.transport.get_extra_info("peername"))
            return await handler(request)

        app = create_app(FakeConfig())
        app.middlewares.append(peer)
        server = TestServer(app)
        async with server:
            for _ in range(3):
                await collect(session, base_url(server), make_request(stream=True))
        assert len(peers) == 3 and len(set(peers)) == 1

    async def test_status_error_before_the_stream(
        self, fake: TestServer, session: aiohttp.ClientSession
    ) -> None:
        with pytest.raises(RetryableProviderError) as info:
            await collect(session, base_url(fake), make_request("[[fake:status=529]]", stream=True))
        assert info.value.upstream_status == 529 and info.value.http_status == 503

    async def test_no_first_byte(self, fake: TestServer, session: aiohttp.ClientSession) -> None:
        timeouts = upstream.Timeouts(connect_s=1.0, first_byte_s=0.2, idle_s=5.0)
        started = time.monotonic()
        with pytest.raises(RetryableProviderError) as info:
            await collect(
                session, base_url(fake), make_request("[[fake:hang]]", stream=True), timeouts
            )
        assert info.value.code == "timeout" and info.value.provider == "fake"
        assert time.monotonic() - started < 1.0

    async def test_headers_but_no_first_event(
        self, fake: TestServer, session: aiohttp.ClientSession
    ) -> None:
        timeouts = upstream.Timeouts(connect_s=1.0, first_byte_s=0.2, idle_s=5.0)
        started = time.monotonic()
        with pytest.raises(RetryableProviderError) as info:
            await collect(
                session,
                base_url(fake),
                make_request("[[fake:ttft_ms=5000]]", stream=True),
                timeouts,
            )
        assert info.value.code == "timeout"
        assert time.monotonic() - started < 1.0

    async def test_idle_gap(self, fake: TestServer, session: aiohttp.ClientSession) -> None:
        timeouts = upstream.Timeouts(connect_s=1.0, first_byte_s=2.0, idle_s=0.15)
        req = make_request("[[fake:chunk_delay_ms=2000]]", stream=True)
        got: list[StreamDelta] = []
        started = time.monotonic()
        with pytest.raises(RetryableProviderError) as info:
            async for delta in upstream.stream(
                session, ADAPTER, make_target(base_url(fake)), req, timeouts
            ):
                got.append(delta)
        assert info.value.code == "timeout"
        assert time.monotonic() - started < 1.0
        assert text_of(got) == "Hello from the "  # the first piece came before the gap

    async def test_steady_events_outlast_the_idle_timeout(
        self, fake: TestServer, session: aiohttp.ClientSession
    ) -> None:
        # Each gap is under the idle timeout, the whole stream far over it.
        timeouts = upstream.Timeouts(connect_s=1.0, first_byte_s=2.0, idle_s=0.12)
        req = make_request("[[fake:chunks=12,chunk_delay_ms=40]]", stream=True)
        started = time.monotonic()
        got = [
            d
            async for d in upstream.stream(
                session, ADAPTER, make_target(base_url(fake)), req, timeouts
            )
        ]
        assert time.monotonic() - started > 0.4
        assert text_of(got)

    async def test_a_slow_consumer_is_not_cancelled_by_the_idle_timer(
        self, fake: TestServer, session: aiohttp.ClientSession
    ) -> None:
        # The consumer's own waits are not the upstream's silence: they are never
        # cancelled, and events the upstream already sent are still delivered.
        timeouts = upstream.Timeouts(connect_s=1.0, first_byte_s=2.0, idle_s=0.1)
        req = make_request("[[fake:chunks=3]]", stream=True)
        got: list[StreamDelta] = []
        async for delta in upstream.stream(
            session, ADAPTER, make_target(base_url(fake)), req, timeouts
        ):
            got.append(delta)
            await asyncio.sleep(0.25)  # would be cancelled if the timer hit us here
        assert text_of(got)

    async def test_an_outside_cancel_stays_a_cancel(
        self, fake: TestServer, session: aiohttp.ClientSession
    ) -> None:
        timeouts = upstream.Timeouts(connect_s=1.0, first_byte_s=2.0, idle_s=5.0)
        req = make_request("[[fake:chunk_delay_ms=2000]]", stream=True)

        async def consume() -> None:
            async for _delta in upstream.stream(
                session, ADAPTER, make_target(base_url(fake)), req, timeouts
            ):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def test_drop_mid_stream(self, fake: TestServer, session: aiohttp.ClientSession) -> None:
        req = make_request("[[fake:drop_after=3]]", stream=True)
        got: list[StreamDelta] = []
        with pytest.raises(RetryableProviderError) as info:
            async for delta in upstream.stream(
                session, ADAPTER, make_target(base_url(fake)), req, FAST
            ):
                got.append(delta)
        assert info.value.code == "connection_error"
        assert len(got) == 4  # role chunk + 3 content chunks

    async def test_error_event_mid_stream(
        self, fake: TestServer, session: aiohttp.ClientSession
    ) -> None:
        with pytest.raises(RetryableProviderError) as info:
            await collect(
                session, base_url(fake), make_request("[[fake:error_event_after=2]]", stream=True)
            )
        assert info.value.provider == "fake"
        assert info.value.message == "The fake provider failed mid-stream."


async def _serve(body_parts: list[bytes], *, hold: asyncio.Event | None = None) -> TestServer:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for part in body_parts:
            await resp.write(part)
        if hold is not None:
            await hold.wait()
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = TestServer(app)
    await server.start_server()
    return server


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return _event(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


class TestStreamEnds:
    async def test_end_after_finish_reason_without_done_is_normal(
        self, session: aiohttp.ClientSession
    ) -> None:
        server = await _serve([_chunk({"content": "hi"}), _chunk({}, "eos")])
        try:
            deltas = await collect(session, base_url(server), make_request(stream=True))
        finally:
            await server.close()
        assert text_of(deltas) == "hi"
        assert deltas[-1].choices[0]["finish_reason"] == "stop"

    async def test_end_before_finish_reason_is_a_failure(
        self, session: aiohttp.ClientSession
    ) -> None:
        server = await _serve([_chunk({"content": "hi"})])
        try:
            with pytest.raises(RetryableProviderError) as info:
                await collect(session, base_url(server), make_request(stream=True))
        finally:
            await server.close()
        assert info.value.code == "connection_error"

    async def test_malformed_event_is_retryable(self, session: aiohttp.ClientSession) -> None:
        server = await _serve([b"data: {oops\n\n"])
        try:
            with pytest.raises(RetryableProviderError) as info:
                await collect(session, base_url(server), make_request(stream=True))
        finally:
            await server.close()
        assert info.value.code == "bad_response" and info.value.provider == "fake"


class _Watched:
    """A provider that streams until its client goes away, and notices when it does."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handler)
        self.server = TestServer(app)

    async def handler(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        try:
            await resp.prepare(request)
            while True:
                await resp.write(_chunk({"content": "x"}))
                await asyncio.sleep(0.02)
        except (asyncio.CancelledError, ConnectionError):
            self.gone.set()
            raise


class TestReleaseOnExit:
    @pytest.fixture
    async def watched(self) -> AsyncIterator[_Watched]:
        w = _Watched()
        await w.server.start_server()
        yield w
        await w.server.close()

    async def test_cancelling_the_consumer_closes_the_upstream(
        self, watched: _Watched, session: aiohttp.ClientSession
    ) -> None:
        first = asyncio.Event()

        async def consume() -> None:
            target = make_target(base_url(watched.server))
            async for _ in upstream.stream(
                session, ADAPTER, target, make_request(stream=True), FAST
            ):
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(watched.gone.wait(), 1.0)

    async def test_leaving_the_loop_closes_the_upstream(
        self, watched: _Watched, session: aiohttp.ClientSession
    ) -> None:
        target = make_target(base_url(watched.server))
        gen = upstream.stream(session, ADAPTER, target, make_request(stream=True), FAST)
        async with aclosing(gen):
            async for _ in gen:
                break
        await asyncio.wait_for(watched.gone.wait(), 1.0)


def test_session_factory_settings() -> None:
    async def check() -> None:
        async with upstream.create_client_session(limit_per_host=7) as s:
            connector = s.connector
            assert isinstance(connector, aiohttp.TCPConnector)
            assert connector.limit == 0 and connector.limit_per_host == 7
            assert s.timeout.total is None

    asyncio.run(check())


def test_errors_are_provider_errors() -> None:
    # The fallback loop reads the type; both timeouts and drops are technical.
    assert issubclass(RetryableProviderError, ProviderError)


async def test_cookies_a_provider_sets_never_ride_on_later_calls() -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        body = {
            "id": "c1", "object": "chat.completion", "created": 1, "model": "fake-up",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "finish_reason": "stop"}],
        }  # fmt: skip
        response = web.json_response(body)
        response.set_cookie("__cf_bm", "user-a-session")  # a load balancer's cookie
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    async with TestServer(app) as server:
        session = upstream.create_client_session()
        try:
            # By name: aiohttp's default jar ignores cookies from IP addresses.
            target = make_target(f"http://localhost:{server.port}/v1")
            for _ in range(2):
                await upstream.complete(session, ADAPTER, target, make_request(stream=False), FAST)
        finally:
            await session.close()
    assert seen == [None, None]
