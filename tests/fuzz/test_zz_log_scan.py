"""Last in the fuzz suite (file order): the logs of the whole run hold no API key,
upstream key, token or prompt text; and the run's counts, for the closing report."""

from __future__ import annotations

from tests.fuzz.conftest import LOG_DIRS, TALLY, FuzzEnv
from tests.logscan import scan_logs


def test_no_secret_or_prompt_in_any_log_line(fuzz_env: FuzzEnv) -> None:
    scan = scan_logs(
        LOG_DIRS,
        secrets=[*fuzz_env.stack.secrets(), fuzz_env.key],
        prompt_markers=["what is this", "prompt-canary"],
    )
    print(f"log scan: {scan.files} files, {scan.lines} lines; fuzz tally: {TALLY}")
    scan.assert_clean()
    assert TALLY["five_xx"] == 0
