"""Fixtures of the fault suite: one private PostgreSQL cluster and Redis server for the
session (never the machine's shared ones), and the gateway's services on them.

Every test gets the stack with all services running (a previous test may have killed
some) and ends with the ledger audit (`settled_audit`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.audit import AuditReport, audit, wait_settled
from tests.faults.harness import FaultStack, fault_stack, servers
from tests.faults.load import Seen
from tests.faults.servers import PgCluster, RedisServer, missing_requirements

SERVICES = ("billing", "worker-1", "worker-2", "api")
# Counts for the closing report (printed at the end of the session by test_zz_log_scan).
TALLY: dict[str, int] = {"faults_injected": 0, "requests_during_faults": 0, "errors_seen": 0}
LOG_DIRS: list[Path] = []


@pytest.fixture(scope="session")
def fault_servers() -> Iterator[tuple[PgCluster, RedisServer]]:
    reason = missing_requirements()
    if reason:
        pytest.skip(f"fault suite needs its own servers: {reason}")
    with servers() as running:
        yield running


@pytest.fixture(scope="session")
def fault_stack_session(
    fault_servers: tuple[PgCluster, RedisServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultStack]:
    pg, redis = fault_servers
    log_dir = tmp_path_factory.mktemp("faults-logs")
    LOG_DIRS.append(log_dir)
    with fault_stack(pg, redis, workers=2, log_dir=log_dir) as stack:
        yield stack


@pytest.fixture
def fstack(fault_stack_session: FaultStack) -> FaultStack:
    """The stack with PostgreSQL, Redis and every service up."""
    stack = fault_stack_session
    if not stack.pg.running():
        stack.pg.start()
    if stack.redis.proc is None or stack.redis.proc.poll() is not None:
        stack.redis.start()
    stack.ensure_running(*SERVICES)
    return stack


@pytest_asyncio.fixture
async def settled_audit(fstack: FaultStack) -> AsyncIterator[list[Seen]]:
    """Collects what the test's clients saw; after the test, waits for the system to
    settle and runs the audit over it (the test fails if the audit does)."""
    seen: list[Seen] = []
    yield seen
    await wait_settled(fstack.redis_url, timeout_s=60)
    report: AuditReport = await audit(fstack.pg_dsn, fstack.redis_url, seen)
    report.assert_clean()


def count_fault(requests: list[Seen]) -> None:
    TALLY["faults_injected"] += 1
    TALLY["requests_during_faults"] += len(requests)
    # Clean errors (503 and the like, in OpenAI's format) are expected while a fault lasts.
    TALLY["errors_seen"] += sum(1 for s in requests if not s.ok)
