"""Run the fake provider as a process: `python -m services.fake_provider --port 8090`."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable
from contextlib import suppress

import structlog
from aiohttp import web

from services.fake_provider.app import FakeConfig, create_app

log = structlog.get_logger("fake_provider")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8090, help="port to listen on (0: any free)")
    parser.add_argument("--ttft-ms", type=int, default=0, help="delay before the first chunk")
    parser.add_argument("--chunks", type=int, default=8, help="content chunks per answer")
    parser.add_argument("--chunk-delay-ms", type=int, default=0, help="delay between chunks")
    parser.add_argument("--no-auth", action="store_true", help="accept requests without an API key")


def main(args: argparse.Namespace) -> int:
    config = FakeConfig(
        ttft_ms=args.ttft_ms,
        chunks=args.chunks,
        chunk_delay_ms=args.chunk_delay_ms,
        require_auth=not args.no_auth,
    )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(config, args.host, args.port))
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(config: FakeConfig, host: str, port: int) -> None:
    # handler_cancellation: a client that disconnects ends its hanging or slow handler.
    runner = web.AppRunner(
        create_app(config), handler_cancellation=True, access_log=None, shutdown_timeout=2.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
        await site.start()
        bound_port = port
        for address in runner.addresses:  # the real port when asked for port 0
            if isinstance(address, tuple) and len(address) >= 2:
                bound_port = int(address[1])
                break
        log.info("fake_provider_listening", host=host, port=bound_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with suppress(NotImplementedError):  # not on Windows
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
