"""The design's floor: the gateway's transport path with none of its features.

An aiohttp edge checks one bearer key, queues each request on a Redis stream and waits
for its answer on the one pub/sub channel its process subscribes to; a worker reads the
stream in a consumer group, forwards the body untouched to the upstream over a pooled
aiohttp session and publishes the answer, or each piece of a stream as it arrives. Same
libraries as the gateway (aiohttp, redis-py with hiredis, uvloop, orjson). Like the
gateway's worker, it coalesces: what its jobs send while a flush is in flight goes out
in the next one, one PUBLISH per edge and one XACK, so that the floor is not costlier
than the gateway for want of batching. No accounts, wallets, rate limits, validation,
translation, fallback, billing, logs or metrics.

The proxy role is the same edge calling the upstream itself, with no queue: the
difference between proxy and floor is what the queue's hops cost.

`python -m bench` puts S1, S2, S3, S7 and a bad-key load through them beside the
gateway (`bench/scenarios.py`, `Bench.floor`). The floor is the required shape
(queue-backed services in Python) written plainly with stock libraries: where it misses
a budget by far on the machine at hand, trimming the gateway's features will not meet
it; what is left is the libraries and the hops themselves.

    python -m bench.floor edge --port 8100 --redis redis://127.0.0.1:6379/0 --key K
    python -m bench.floor worker --redis redis://127.0.0.1:6379/0 --upstream URL --upstream-key K
    python -m bench.floor proxy --port 8101 --key K --upstream URL --upstream-key K
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import struct
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from redis.asyncio import Redis
from redis.exceptions import ResponseError

JOBS = "floor:jobs"
GROUP = "floor"
# A pub/sub message holds frames, each a 4-byte length then the frame; a frame is the
# request id (32 hex bytes), one kind byte, then the payload.
ID_LEN = 32
_LENGTH = struct.Struct(">I")
ANSWER = b"A"  # payload: b"<status> <body>", the whole answer
CHUNK = b"C"  # payload: bytes of the upstream's event stream, relayed as they came
END = b"E"  # the stream is over
TIMEOUT_S = 60.0
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
ROLES = ("worker", "edge", "proxy")


def commands(
    python: str,
    *,
    redis_url: str,
    upstream: str,
    upstream_key: str,
    key: str,
    edge_port: int,
    proxy_port: int,
) -> dict[str, list[str]]:
    """The command line of each role, worker first (the edge queues for it)."""
    tail = ["--key", key, "--upstream", upstream, "--upstream-key", upstream_key]
    args = {
        "worker": ["--redis", redis_url],
        "edge": ["--redis", redis_url, "--port", str(edge_port)],
        "proxy": ["--port", str(proxy_port)],
    }
    return {role: [python, "-m", "bench.floor", role, *args[role], *tail] for role in ROLES}


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": None}},
        status=status,
    )


async def _admit(request: web.Request, authorization: str) -> tuple[bytes, bool] | web.Response:
    """The body and whether it asks for a stream, or the refusal to send."""
    if request.headers.get("Authorization") != authorization:
        return _error(401, "Incorrect API key provided.", "invalid_request_error")
    body = await request.read()
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _error(400, "The body is not valid JSON.", "invalid_request_error")
    return body, isinstance(parsed, dict) and parsed.get("stream") is True


def _upstream_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


class Edge:
    """The api's part: one bearer key, one stream to queue on, one reply channel."""

    def __init__(self, redis: Redis, key: str) -> None:
        self.redis = redis
        self.authorization = f"Bearer {key}"
        self.channel = f"floor:reply:{uuid.uuid4().hex}".encode()
        self.waiting: dict[bytes, asyncio.Queue[bytes]] = {}

    async def listen(self, subscribed: asyncio.Event) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.channel)
        subscribed.set()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is None:
                continue
            data: bytes = message["data"]
            at = 0
            while at < len(data):
                (size,) = _LENGTH.unpack_from(data, at)
                frame = data[at + 4 : at + 4 + size]
                at += 4 + size
                queue = self.waiting.get(frame[:ID_LEN])
                if queue is not None:
                    queue.put_nowait(frame[ID_LEN:])

    async def chat(self, request: web.Request) -> web.StreamResponse:
        admitted = await _admit(request, self.authorization)
        if isinstance(admitted, web.Response):
            return admitted
        body, stream = admitted
        request_id = uuid.uuid4().hex.encode()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.waiting[request_id] = queue
        try:
            await self.redis.xadd(
                JOBS,
                {"id": request_id, "reply": self.channel, "stream": int(stream), "body": body},
            )
            async with asyncio.timeout(TIMEOUT_S):
                return await self._answer(request, queue)
        except TimeoutError:
            return _error(504, "The upstream did not answer in time.", "timeout")
        finally:
            del self.waiting[request_id]

    @staticmethod
    async def _answer(request: web.Request, queue: asyncio.Queue[bytes]) -> web.StreamResponse:
        message = await queue.get()
        if message[:1] == ANSWER:
            status, _, answer = message[1:].partition(b" ")
            return web.Response(body=answer, status=int(status), content_type="application/json")
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        while message[:1] == CHUNK:
            await response.write(message[1:])
            message = await queue.get()
        await response.write_eof()
        return response


class Outbox:
    """Frames and acks wait here while a flush is in flight; each flush is one round
    trip: one PUBLISH per channel carrying all its frames, and one XACK."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.frames: dict[bytes, list[bytes]] = {}
        self.acks: list[bytes] = []
        self.wake = asyncio.Event()

    def publish(self, channel: bytes, frame: bytes) -> None:
        self.frames.setdefault(channel, []).extend((_LENGTH.pack(len(frame)), frame))
        self.wake.set()

    def ack(self, entry_id: bytes) -> None:
        self.acks.append(entry_id)
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            frames, self.frames = self.frames, {}
            acks, self.acks = self.acks, []
            async with self.redis.pipeline(transaction=False) as pipe:
                for channel, parts in frames.items():
                    pipe.publish(channel, b"".join(parts))
                if acks:
                    pipe.xack(JOBS, GROUP, *acks)
                await pipe.execute()


class Worker:
    """The worker's part: a consumer group, one pooled session, one task per job."""

    def __init__(
        self, redis: Redis, session: ClientSession, upstream: str, upstream_key: str
    ) -> None:
        self.redis = redis
        self.session = session
        self.upstream = upstream
        self.headers = _upstream_headers(upstream_key)
        self.name = uuid.uuid4().hex
        self.tasks: set[asyncio.Task[None]] = set()
        self.outbox = Outbox(redis)

    async def run(self) -> None:
        flusher = asyncio.create_task(self.outbox.run())
        try:
            await self._read()
        finally:
            flusher.cancel()

    async def _read(self) -> None:
        # From the stream's start: an edge may queue before the group exists.
        with contextlib.suppress(ResponseError):  # the group exists
            await self.redis.xgroup_create(JOBS, GROUP, id="0", mkstream=True)
        while True:
            batches = await self.redis.xreadgroup(
                GROUP, self.name, {JOBS: ">"}, count=256, block=1000
            )
            for _stream, entries in batches or ():
                for entry_id, fields in entries:
                    task = asyncio.create_task(self.serve(entry_id, fields))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)

    async def serve(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        request_id, channel = fields[b"id"], fields[b"reply"]
        send = self.outbox.publish
        try:
            async with self.session.post(
                self.upstream, data=fields[b"body"], headers=self.headers
            ) as response:
                if fields[b"stream"] == b"1" and response.status == 200:
                    async for piece in response.content.iter_any():
                        send(channel, request_id + CHUNK + piece)
                    send(channel, request_id + END)
                else:
                    answer = await response.read()
                    head = request_id + ANSWER + str(response.status).encode() + b" "
                    send(channel, head + answer)
        except (ClientError, TimeoutError):
            failure = orjson.dumps({"error": {"message": "upstream failed", "type": "api_error"}})
            send(channel, request_id + ANSWER + b"502 " + failure)
        finally:
            self.outbox.ack(entry_id)


class Proxy:
    """The edge without the queue: it calls the upstream itself."""

    def __init__(self, session: ClientSession, key: str, upstream: str, upstream_key: str) -> None:
        self.session = session
        self.authorization = f"Bearer {key}"
        self.upstream = upstream
        self.headers = _upstream_headers(upstream_key)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        admitted = await _admit(request, self.authorization)
        if isinstance(admitted, web.Response):
            return admitted
        body, stream = admitted
        try:
            async with self.session.post(self.upstream, data=body, headers=self.headers) as answer:
                if not (stream and answer.status == 200):
                    return web.Response(
                        body=await answer.read(),
                        status=answer.status,
                        content_type="application/json",
                    )
                response = web.StreamResponse(headers=_SSE_HEADERS)
                await response.prepare(request)
                async for piece in answer.content.iter_any():
                    await response.write(piece)
                await response.write_eof()
                return response
        except (ClientError, TimeoutError):
            return _error(502, "upstream failed", "api_error")


async def _serve_app(app: web.Application, args: argparse.Namespace, stop: asyncio.Event) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port, backlog=4096).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _session() -> ClientSession:
    connector = TCPConnector(limit=0, keepalive_timeout=60)
    return ClientSession(connector=connector, timeout=ClientTimeout(total=TIMEOUT_S))


async def _serve_edge(args: argparse.Namespace, stop: asyncio.Event) -> None:
    redis = Redis.from_url(args.redis, max_connections=None)
    edge = Edge(redis, args.key)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", edge.chat)
    subscribed = asyncio.Event()
    listener = asyncio.create_task(edge.listen(subscribed))
    await subscribed.wait()
    try:
        await _serve_app(app, args, stop)
    finally:
        listener.cancel()
        await redis.aclose()


async def _serve_proxy(args: argparse.Namespace, stop: asyncio.Event) -> None:
    async with _session() as session:
        app = web.Application()
        app.router.add_post(
            "/v1/chat/completions", Proxy(session, args.key, args.upstream, args.upstream_key).chat
        )
        await _serve_app(app, args, stop)


async def _serve_worker(args: argparse.Namespace, stop: asyncio.Event) -> None:
    redis = Redis.from_url(args.redis, max_connections=None)
    async with _session() as session:
        worker = Worker(redis, session, args.upstream, args.upstream_key)
        reader = asyncio.create_task(worker.run())
        try:
            await stop.wait()
        finally:
            reader.cancel()
            await redis.aclose()


SERVE: dict[str, Callable[[argparse.Namespace, asyncio.Event], Awaitable[None]]] = {
    "edge": _serve_edge,
    "worker": _serve_worker,
    "proxy": _serve_proxy,
}


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await SERVE[args.role](args, stop)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--redis", default="")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", default="")
    parser.add_argument("--upstream", default="")
    parser.add_argument("--upstream-key", default="")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Any:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:  # the gateway runs on uvloop where it is installed; so does this
        return asyncio.run(_main(args))
    return uvloop.run(_main(args))


if __name__ == "__main__":
    main()
