"""The Redis client every service uses: redis-py's, with a cheaper connection check.

redis-py 5 (the newest arq allows) checks each pooled connection before every command by
reading it with a zero timeout: a timer, a TimeoutError raised and caught, on every
command. Profiles of the api showed it among the top costs per request. redis-py 8
replaced it with a look at the buffers (redis/redis-py#4063); this pool does the same,
and falls back to redis-py's own check for a parser it does not know.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

try:
    from redis._parsers.hiredis import _AsyncHiredisParser
except ImportError:  # pragma: no cover - redis-py without the hiredis parser module
    _AsyncHiredisParser = None  # type: ignore[assignment,misc]


def redis_client(url: str, **kwargs: Any) -> Redis:
    """A client with its own pool, closed with the client (`aclose()`)."""
    return Redis.from_pool(CheckedPool.from_url(url, **kwargs))


class CheckedPool(ConnectionPool):
    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        # redis-py's version, minus its deprecation wrapper (also per command).
        async with self._lock:
            connection = self.get_available_connection()
            try:
                await self.ensure_connection(connection)
            except BaseException:
                await self.release(connection)
                raise
        return connection

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        await connection.connect()
        try:
            if await _has_unread_data(connection):
                raise RedisConnectionError("Connection has data")
        except (RedisConnectionError, OSError):
            await connection.disconnect()
            await connection.connect()
            if await _has_unread_data(connection):
                raise RedisConnectionError("Connection not ready") from None


async def _has_unread_data(connection: AbstractConnection) -> bool:
    """A connection back in the pool with bytes left to read (or closed by the server)
    is out of step with its replies, and must not serve the next command."""
    parser = getattr(connection, "_parser", None)
    if _AsyncHiredisParser is not None and isinstance(parser, _AsyncHiredisParser):
        reader, stream = parser._reader, getattr(parser, "_stream", None)
        if not getattr(parser, "_connected", False) or reader is None or stream is None:
            raise RedisConnectionError("Connection closed by server.")
        return bool(reader.has_data() or stream.at_eof() or stream._buffer)
    return bool(await connection.can_read_destructive())
