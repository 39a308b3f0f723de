"""Key revocation, broadcast: every api process drops a revoked key within a moment.

Whoever revokes a key (the CLI, an admin endpoint) publishes its id on
`gw:keys:events` after the revocation is committed. Each api process holds one
subscription to that channel and evicts the key from its cache, so the next request
with it goes to the database and is refused. If the subscription breaks, messages may
have been missed, so the whole key cache is dropped on every (re)subscription: a
missed revocation can never outlive a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog
from redis.exceptions import RedisError

from shared.redis import keys

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from services.api.auth import Authenticator

log = structlog.get_logger("api.key_events")


async def publish_key_revoked(redis: Redis, key_id: str) -> int:
    """Tell every api process to forget `key_id`; returns how many processes heard it."""
    return int(await redis.publish(keys.KEY_EVENTS_CHANNEL, key_id))


class KeyEventListener:
    """The api process's one subscription to key events."""

    def __init__(self, redis: Redis, auth: Authenticator) -> None:
        self._redis = redis
        self._auth = auth
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.evicted = 0

    async def start(self, timeout_s: float = 10.0) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), timeout_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff_s = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.KEY_EVENTS_CHANNEL)
                self._auth.forget_all_keys()
                self.ready.set()
                backoff_s = 0.1
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
                        self._on_message(message["data"])
            except (RedisError, OSError) as exc:
                self.ready.clear()
                log.warning("key_events_subscription_lost", error=type(exc).__name__)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _on_message(self, raw: bytes | str) -> None:
        key_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        self.evicted += self._auth.forget_key(key_id)
