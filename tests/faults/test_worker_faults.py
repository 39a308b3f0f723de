"""Workers die or stop while streams are in flight."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.faults.checks import (
    assert_clean_outcomes,
    assert_errors_not_billed_as_answers,
    log_events,
    wait_for,
)
from tests.faults.conftest import count_fault
from tests.faults.harness import FaultStack
from tests.faults.load import Mix, Seen, run_load

pytestmark = pytest.mark.timeout(150)


async def test_kill_9_worker_mid_stream(fstack: FaultStack, settled_audit: list[Seen]) -> None:
    """Two workers serve slow streams; one is SIGKILLed. Its clients get a clean error
    (content had begun) or the full answer from the other worker (XAUTOCLAIM after
    WORKER_CLAIM_IDLE_MS); nothing is charged twice (the audit)."""
    _user, key = await fstack.funded_user("50")
    reclaimed_before = len(log_events(fstack.log_dir / "worker-2.log", "job_reclaimed"))
    load = asyncio.create_task(
        run_load(
            fstack.api_url,
            [key],
            max_requests=24,
            concurrency=12,
            mix=Mix(stream_fraction=0.75, slow_fraction=1.0),
        )
    )
    # Kill once streams are under way on both workers.
    await wait_for(
        lambda: fstack.jobs_held_by("worker-1") >= 3 or load.done(),
        10,
        "worker-1 to take jobs",
    )
    await asyncio.sleep(0.2)
    fstack.kill("worker-1")
    report = await load
    settled_audit.extend(report.seen)
    count_fault(report.seen)

    print("kill -9 worker:", report.statuses())
    assert_clean_outcomes(report.seen)
    reclaimed = log_events(fstack.log_dir / "worker-2.log", "job_reclaimed")[reclaimed_before:]
    assert reclaimed, "worker-2 reclaimed none of the dead worker's jobs"
    assert report.ok, f"no request succeeded: {report.statuses()}"
    await assert_errors_not_billed_as_answers(fstack, report.errors)


async def test_sigterm_worker_finishes_in_flight(
    fstack: FaultStack, settled_audit: list[Seen]
) -> None:
    """SIGTERM: the worker stops taking jobs, finishes the streams it holds, exits 0."""
    _user, key = await fstack.funded_user("50")
    load = asyncio.create_task(
        run_load(
            fstack.api_url,
            [key],
            max_requests=24,
            concurrency=10,
            mix=Mix(stream_fraction=0.75, slow_fraction=1.0),
        )
    )
    await wait_for(lambda: fstack.jobs_held_by("worker-1") >= 2 or load.done(), 10, "jobs on worker-1")
    held = fstack.jobs_held_by("worker-1")
    proc = fstack.signal("worker-1", signal.SIGTERM)
    report = await load
    settled_audit.extend(report.seen)
    count_fault(report.seen)
    exit_code = await asyncio.to_thread(proc.wait, 40)

    assert held >= 1, "worker-1 held no job when it was told to stop"
    assert exit_code == 0
    print("SIGTERM worker:", report.statuses(), "held at SIGTERM:", held)
    assert all(s.ok for s in report.seen), report.statuses()
    assert_clean_outcomes(report.seen)
    assert log_events(fstack.log_dir / "worker-1.log", "worker_draining")
