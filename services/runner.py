"""Process entry points: `gateway run api|worker|billing|all`.

`run all` is a small supervisor for one machine: it starts what is missing (a Redis
server bundled from PyPI when `REDIS_URL` is unset, SQLite under `var/` when
`DATABASE_URL` is unset, the fake provider in demo mode), applies migrations, then runs
api, worker and billing as child processes and restarts any that crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from shared.logging import configure_logging
from shared.settings import Settings

log = structlog.get_logger("runner")

SERVICES = ("api", "worker", "billing")
EMBEDDED_REDIS_URL_FILE = "redis/url"


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# Young collections every this many net container allocations (CPython's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def _settle_heap() -> None:
    """Tune the cyclic garbage collector for a long-running service, once imported.

    Measured under S1: the collector took about 13% of the gateway's CPU, walking the
    objects that imports create (modules, classes, functions: they live as long as the
    process) over and over. `gc.freeze()` moves them out of its sight; the higher young
    threshold makes collections rarer (a request's objects are nearly all freed by
    reference counting; cyclic garbage waits a little longer, a few MB at most).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def resolve_redis_url(settings: Settings) -> str | None:
    """`REDIS_URL`, or the embedded server's URL while `gateway run all` runs it."""
    if settings.redis_url:
        return settings.redis_url
    url_file = settings.var_dir / EMBEDDED_REDIS_URL_FILE
    if url_file.is_file():
        return url_file.read_text().strip() or None
    return None


def run_service(name: str) -> int:
    settings = Settings.from_env()
    configure_logging(
        settings.log_level, settings.log_format, service=name, log_prompts=settings.log_prompts
    )
    if name == "all":
        return Supervisor(settings).run()
    redis_url = resolve_redis_url(settings)
    if not redis_url:
        log.error("redis_url_missing", hint="set REDIS_URL, or use `gateway run all`")
        return 2
    target = _service_main(name)
    _install_uvloop()
    _settle_heap()
    return asyncio.run(_run_until_signal(target, settings, redis_url))


def _service_main(
    name: str,
) -> Callable[[Settings, str, asyncio.Event], Coroutine[Any, Any, None]]:
    if name == "api":
        from services.api.app import run_api

        return run_api
    if name == "worker":
        from services.worker.main import run_worker

        return run_worker
    if name == "billing":
        from services.billing.main import run_billing

        return run_billing
    raise ValueError(f"unknown service {name!r}")


async def _run_until_signal(
    main: Callable[[Settings, str, asyncio.Event], Coroutine[Any, Any, None]],
    settings: Settings,
    redis_url: str,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await main(settings, redis_url, stop)
    return 0


# Ports free_port() has handed out in this process.
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and never one this process handed out before.

    Callers pick several ports before anything binds them (api, fake provider, metrics),
    and the kernel may offer the same free port twice in a row: two services would then
    be told to share it, and a health check could get its answer from the wrong one.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def wait_for_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.05)
    return False


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.var_dir = settings.var_dir.resolve()
        self.env = dict(os.environ)
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.infra: list[subprocess.Popen[bytes]] = []
        self.stopping = False

    def run(self) -> int:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._start_redis()
            self._migrate()
            demo = self._start_demo_provider()
            for name in SERVICES:
                self._spawn(name)
            if demo and not self.stopping:
                self._announce_demo()
            self._supervise()
        finally:
            self._shutdown()
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            log.info("supervisor_stopping", signal=signal.Signals(signum).name)
        self.stopping = True

    def _start_redis(self) -> None:
        if self.settings.redis_url:
            return
        from services import embedded_redis

        data_dir = self.var_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        proc = subprocess.Popen(
            embedded_redis.command(port, data_dir, ["--logfile", str(data_dir / "redis.log")]),
            stdin=subprocess.DEVNULL,
        )
        self.infra.append(proc)
        embedded_redis.prefer_batching(proc.pid)
        if not wait_for_port(port, 10):
            raise RuntimeError("the embedded Redis server did not start; see var/redis/redis.log")
        url = f"redis://127.0.0.1:{port}/0"
        (data_dir / "url").write_text(url)
        self.env["REDIS_URL"] = url
        log.info("embedded_redis_started", url=url, data_dir=str(data_dir), appendonly=True)

    def _migrate(self) -> None:
        from shared.db.migrate import upgrade_to_head

        url = self.settings.effective_database_url
        upgrade_to_head(url)
        log.info("migrations_applied", database=url.split("@")[-1])

    def _start_demo_provider(self) -> bool:
        if self.settings.provider_keys or self.settings.demo_mode:
            return False
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.fake_provider", "--port", str(port)],
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        self.infra.append(proc)
        if not wait_for_port(port, 15):
            raise RuntimeError("the demo provider did not start")
        self.env.update(
            GATEWAY_DEMO="1", BASE_URL_FAKE=f"http://127.0.0.1:{port}/v1", API_KEY_FAKE="demo"
        )
        log.info(
            "demo_mode",
            reason="no provider API key is set (API_KEY_OPENAI, API_KEY_ANTHROPIC, ...)",
            fake_provider=f"http://127.0.0.1:{port}",
        )
        return True

    def _announce_demo(self) -> None:
        from services.demo import ensure_demo_account

        account = asyncio.run(
            ensure_demo_account(self.settings, self.var_dir, redis_url=self.env.get("REDIS_URL"))
        )
        port = self.settings.port
        if not wait_for_port(port, 30):
            log.error("api_not_listening", port=port)
            return
        curl = (
            f"curl -s http://localhost:{port}/v1/chat/completions \\\n"
            f"  -H 'Authorization: Bearer {account.api_key}' \\\n"
            "  -H 'Content-Type: application/json' \\\n"
            "  -d '{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'"
        )
        log.info("demo_ready", user_id=account.user_id, balance_usd=account.balance_usd)
        print(
            "\nThe gateway is running in demo mode (every model answers from the fake provider).\n"
            f"Demo user {account.user_id}, wallet ${account.balance_usd}. Try:\n\n{curl}\n",
            flush=True,
        )

    def _spawn(self, name: str) -> None:
        self.children[name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", name],
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        log.info("service_started", service=name, pid=self.children[name].pid)

    def _supervise(self) -> None:
        restarts: dict[str, list[float]] = {name: [] for name in SERVICES}
        while not self.stopping:
            time.sleep(0.5)
            for name, proc in list(self.children.items()):
                code = proc.poll()
                if code is None or self.stopping:
                    continue
                now = time.monotonic()
                recent = [t for t in restarts[name] if now - t < 60]
                restarts[name] = [*recent, now]
                if len(recent) >= 5:
                    log.error("service_crash_loop", service=name, exit_code=code)
                    self.stopping = True
                    break
                log.warning("service_exited", service=name, exit_code=code, action="restart")
                self._spawn(name)

    def _shutdown(self) -> None:
        # Api first (stop taking requests), then workers and billing drain, then infra.
        for group in (["api"], ["worker", "billing"]):
            procs = [self.children[n] for n in group if n in self.children]
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for proc in reversed(self.infra):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        url_file = self.var_dir / EMBEDDED_REDIS_URL_FILE
        with contextlib.suppress(FileNotFoundError):
            url_file.unlink()
        log.info("supervisor_stopped")
