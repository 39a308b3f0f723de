"""Assertions shared by the fault tests: what a "clean" outcome looks like to a client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tests.faults.harness import FaultStack
from tests.faults.load import FULL_REPLY, Seen
from tests.oracles import validate_openai


def assert_clean_outcomes(seen: Iterable[Seen], *, allow_connection_errors: bool = False) -> None:
    """Each request either got the full answer, or an error in OpenAI's format.

    A stream that began and then failed must carry an error event (the SDK raises it),
    never just stop; a request that never began gets an HTTP error with an OpenAI body.
    Connection errors are only acceptable when the test took the api itself away.
    """
    for s in seen:
        if s.ok:
            assert s.text == FULL_REPLY, f"request {s.index} ({s.request_id}) got {s.text!r}"
            continue
        if s.error_kind == "connection" and allow_connection_errors:
            continue
        assert s.error_kind in {"status", "stream"}, (
            f"request {s.index} ({s.request_id}) ended unclean: {s.error_kind} {s.error}"
        )
        assert s.error is not None, f"request {s.index}: error without an OpenAI error body"
        validate_openai("ErrorResponse", {"error": s.error})
        if s.error_kind == "status":
            assert s.status is not None and s.status >= 400


def log_events(log: Path, event: str) -> list[str]:
    if not log.exists():
        return []
    return [line for line in log.read_text(errors="replace").splitlines() if f'"{event}"' in line]


async def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def assert_errors_not_billed_as_answers(stack: FaultStack, errors: Iterable[Seen]) -> None:
    """A client that saw an error must not pay for a whole answer: its usage row (if
    any) is an error or a cancellation, billed for what was generated before the stop."""
    for s in errors:
        if s.request_id is None:
            continue
        rows = await stack.query(
            "SELECT status, completion_tokens FROM usage_records WHERE request_id = $1",
            s.request_id,
        )
        for row in rows:
            assert row["status"] != "ok", (
                f"request {s.index} ({s.request_id}): the client saw {s.error_kind} "
                f"{(s.error or {}).get('message')!r} but was billed a full answer "
                f"({row['completion_tokens']} completion tokens)"
            )
