"""shared/logging.py as a process configures it: JSON lines, secrets and user text kept out.

Each case runs in a child interpreter, because structlog's configuration (and its
cached loggers) is process-wide.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import orjson

KEY = "gw-" + "k" * 48
UPSTREAM_KEY = "sk-" + "u" * 40
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEyMyJ9.c2lnbmF0dXJlLXZhbHVl"
PROMPT = "my very private prompt"

SCRIPT = f"""
import logging, structlog, sys
from shared.logging import configure_logging
configure_logging(sys.argv[1], "json", service="api", log_prompts=sys.argv[2] == "1")
structlog.contextvars.bind_contextvars(request_id="req_abc")
log = structlog.get_logger("t")
log.info("request_finished", status=200, api_key={KEY!r}, authorization="Bearer x")
log.warning("provider_failed", detail="upstream said: invalid key {UPSTREAM_KEY} / {KEY}")
log.info("jwt_seen", note="Bearer {JWT}")
log.debug("prompt_text", messages=[{{"role": "user", "content": {PROMPT!r}}}])
log.info("prompt_text_at_info", messages=[{{"role": "user", "content": {PROMPT!r}}}])
log.debug("completion_text", completion_text="the answer")
logging.getLogger("aiohttp.server").error("stdlib line with %s", {KEY!r})
"""


def run(level: str, log_prompts: bool) -> tuple[list[dict[str, Any]], str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), level, "1" if log_prompts else "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [orjson.loads(line) for line in done.stderr.splitlines()], done.stderr


def test_lines_are_json_with_request_id_and_no_secrets() -> None:
    lines, raw = run("debug", log_prompts=False)
    events = [line["event"] for line in lines]
    assert events[:3] == ["request_finished", "provider_failed", "jwt_seen"]
    assert all(line.get("request_id") == "req_abc" for line in lines)
    assert all(line["service"] == "api" for line in lines)
    assert lines[0]["api_key"] == "[redacted]" and lines[0]["authorization"] == "[redacted]"
    stdlib = [line for line in lines if line.get("logger") == "aiohttp.server"]
    assert len(stdlib) == 1 and stdlib[0]["level"] == "error"
    for secret in (KEY, UPSTREAM_KEY, JWT, PROMPT, "the answer"):
        assert secret not in raw
    # Without LOG_PROMPTS the text fields are dropped, the events stay.
    prompt_lines = [line for line in lines if line["event"].startswith("prompt_text")]
    assert prompt_lines and all("messages" not in line for line in prompt_lines)


def test_log_prompts_shows_text_only_on_marked_debug_lines() -> None:
    lines, raw = run("debug", log_prompts=True)
    by_event = {line["event"]: line for line in lines}
    assert by_event["prompt_text"]["messages"][0]["content"] == PROMPT
    assert by_event["prompt_text"]["log_prompts"] is True
    assert by_event["completion_text"]["completion_text"] == "the answer"
    assert "messages" not in by_event["prompt_text_at_info"]  # never above debug
    assert KEY not in raw and UPSTREAM_KEY not in raw

    lines, raw = run("info", log_prompts=True)  # debug lines are filtered out entirely
    assert PROMPT not in raw and "the answer" not in raw
