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

    async def run_many(self, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Many calls, one pipelined round trip. Only calls that met NOSCRIPT are redone
        (after loading the script), so none runs twice."""
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _attempt in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    call_keys, call_args = calls[i]
                    pipe.evalsha(self.sha, len(call_keys), *call_keys, *call_args)
                answers = await pipe.execute(raise_on_error=False)
            missing = []
            for i, answer in zip(todo, answers, strict=True):
                if isinstance(answer, NoScriptError):
                    missing.append(i)
                else:
                    results[i] = answer
            if not missing:
                break
            await self._redis.script_load(self._source)
            todo = missing
        for answer in results:
            if isinstance(answer, Exception):
                raise answer
        return results
