"""The arq queue every service shares: one queue name, JSON payloads (never pickle)."""

from __future__ import annotations

from typing import Any

import orjson
from arq.connections import ArqRedis, RedisSettings, create_pool

from shared.redis.keys import ARQ_QUEUE


def job_dumps(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value)


def job_loads(raw: bytes) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(raw)
    return data


async def create_arq_pool(redis_url: str) -> ArqRedis:
    return await create_pool(
        RedisSettings.from_dsn(redis_url),
        job_serializer=job_dumps,
        job_deserializer=job_loads,
        default_queue_name=ARQ_QUEUE,
    )
