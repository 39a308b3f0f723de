"""Lua scripts called with EVALSHA, and loaded with EVAL when the server lacks them
(after a restart or a SCRIPT FLUSH). redis-py's own `Script.__call__` costs an
`isinstance` check against a `typing.Protocol` on every call, which showed in profiles
of the admission hot path."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    from redis.asyncio import Redis

LUA_DIR = Path(__file__).with_name("lua")


class LuaScript:
    def __init__(self, redis: Redis, source: str) -> None:
        self._redis = redis
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis's script id

    @classmethod
    def named(cls, redis: Redis, name: str) -> LuaScript:
        """The script `shared/redis/lua/<name>.lua`."""
        return cls(redis, (LUA_DIR / f"{name}.lua").read_text())

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return await self._redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._redis.eval(self._source, len(keys), *keys, *args)
