"""Finishing jobs: their events, one ack and their health samples, sent together."""

from __future__ import annotations

import asyncio

from fakeredis import FakeAsyncRedis

from services.worker.main import JobEnd, build_job_ends
from services.worker.outbox import Outbox
from shared.provider_stats import MAX_SAMPLES, Sample
from shared.redis import keys


async def test_jobs_finishing_in_one_tick_share_one_ack_and_one_push_per_target() -> None:
    redis = FakeAsyncRedis()
    await redis.xgroup_create(keys.JOBS_STREAM, keys.JOBS_GROUP, id="0", mkstream=True)
    ids = [await redis.xadd(keys.JOBS_STREAM, {"j": str(i)}) for i in range(3)]
    await redis.xreadgroup(keys.JOBS_GROUP, "w1", {keys.JOBS_STREAM: ">"})
    assert (await redis.xpending(keys.JOBS_STREAM, keys.JOBS_GROUP))["pending"] == 3
    # Enough samples to show the cap still holds when one push carries many.
    old = [Sample(1, True, 9)] * MAX_SAMPLES
    await redis.lpush(keys.provider_stats("a", "m"), *(s.encode() for s in old))
    ends = [
        JobEnd(
            ids[0], b"event0", [("a", "m", Sample(10, True, 100)), ("b", "m", Sample(10, False, 5))]
        ),
        JobEnd(ids[1], b"event1", []),
        JobEnd(ids[2], b"event2", [("a", "m", Sample(11, True, 200))]),
    ]
    sent: list[str] = []
    pipeline = redis.pipeline

    def recording_pipeline(*args, **kwargs):  # type: ignore[no-untyped-def]
        pipe = pipeline(*args, **kwargs)
        execute = pipe.execute

        async def execute_and_record(*a, **kw):  # type: ignore[no-untyped-def]
            sent.extend(str(cmd[0][0]) for cmd in pipe.command_stack)
            return await execute(*a, **kw)

        pipe.execute = execute_and_record
        return pipe

    redis.pipeline = recording_pipeline  # type: ignore[method-assign]
    outbox = Outbox(redis)
    await asyncio.gather(*(outbox.submit_together(build_job_ends, end) for end in ends))

    assert sent == ["XADD", "XADD", "XADD", "XACK", "LPUSH", "LTRIM", "LPUSH", "LTRIM"]
    events = await redis.xrange(keys.EVENTS_STREAM)
    assert [fields[b"e"] for _id, fields in events] == [b"event0", b"event1", b"event2"]
    assert (await redis.xpending(keys.JOBS_STREAM, keys.JOBS_GROUP))["pending"] == 0
    newest_first = await redis.lrange(keys.provider_stats("a", "m"), 0, -1)
    assert len(newest_first) == MAX_SAMPLES
    assert [Sample.decode(raw) for raw in newest_first[:3]] == [
        Sample(11, True, 200), Sample(10, True, 100), Sample(1, True, 9)
    ]
    assert await redis.lrange(keys.provider_stats("b", "m"), 0, -1) == [b"10,0,5,,"]
    await redis.aclose()
