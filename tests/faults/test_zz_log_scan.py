"""Last in the fault suite (file order): the logs of the whole run hold no secret and no
prompt text; and the run's counts, for the closing report."""

from __future__ import annotations

from tests.faults.conftest import LOG_DIRS, TALLY
from tests.faults.harness import FaultStack
from tests.faults.load import PROMPT_CANARY, SLOW_STREAM
from tests.logscan import scan_logs


def test_no_secret_or_prompt_in_any_log_line(fault_stack_session: FaultStack) -> None:
    scan = scan_logs(
        LOG_DIRS,
        secrets=fault_stack_session.secrets(),
        prompt_markers=[PROMPT_CANARY, SLOW_STREAM, "[[fake:"],
    )
    print(f"log scan: {scan.files} files, {scan.lines} lines; fault tally: {TALLY}")
    scan.assert_clean()
