"""A worker finds the cancels it missed on pub/sub in the marks the api leaves."""

from __future__ import annotations

from fakeredis import FakeAsyncRedis

from services.worker.cancel import CancelSignal, apply_cancel_marks
from shared.redis import keys


async def test_only_marked_jobs_are_cancelled() -> None:
    redis = FakeAsyncRedis()
    await redis.set(keys.cancel_mark("gone"), b"1")
    await redis.set(keys.cancel_mark("gone-too"), b"1")
    await redis.set(keys.cancel_mark("not-running-here"), b"1")
    signals = {name: CancelSignal() for name in ("gone", "here", "gone-too")}
    called: list[str] = []
    for name, signal in signals.items():
        signal.on_set(lambda name=name: called.append(name))

    found = await apply_cancel_marks(redis, list(signals.items()))

    assert found == 2
    assert sorted(called) == ["gone", "gone-too"]
    assert not signals["here"].is_set()
    # A second pass sets nothing again: the signals already fired.
    assert await apply_cancel_marks(redis, list(signals.items())) == 0
    assert sorted(called) == ["gone", "gone-too"]
    await redis.aclose()


async def test_no_running_jobs_asks_redis_nothing() -> None:
    class NoRedis:
        async def mget(self, *_args: object) -> list[None]:
            raise AssertionError("no jobs, no MGET")

    assert await apply_cancel_marks(NoRedis(), []) == 0  # type: ignore[arg-type]
