"""Key revocation, broadcast: every api process drops a revoked key within a moment.

Whoever revokes a key (the CLI, an admin endpoint) publishes its id on
`gw:keys:events` after the revocation is committed. Each api process listens on that
channel (through its one pub/sub connection) and evicts the key from its cache, so the
next request with it goes to the database and is refused. If the subscription breaks,
messages may have been missed, so the whole key cache is dropped on every
(re)subscription: a missed revocation can never outlive a reconnect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.redis import keys

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from services.api.auth import Authenticator

async def publish_key_revoked(redis: Redis, key_id: str) -> int:
    """Tell every api process to forget `key_id`; returns how many processes heard it."""
    return int(await redis.publish(keys.KEY_EVENTS_CHANNEL, key_id))


class KeyEventListener:
    """Key events for this process, delivered by the process's one pub/sub connection
    (`ReplyHub`, which subscribes this handler to `gw:keys:events`)."""

    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth
        self.evicted = 0

    def handle(self, data: bytes) -> None:
        key_id = data.decode() if isinstance(data, bytes) else str(data)
        self.evicted += self._auth.forget_key(key_id)

    def resubscribed(self) -> None:
        self._auth.forget_all_keys()
