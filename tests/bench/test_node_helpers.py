"""The benchmark's Node helpers, for real: the fast fake upstream and the load generator.

Short loads (well under a second each) against a fake upstream started here; the
assertions are about correctness (counts, statuses, fidelity), never about speed.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from bench import loadgen
from bench.scenarios import chat_body
from tests.bench.conftest import AUTH, post

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def run(fake_url: str, path: str = "/v1/chat/completions", **spec: Any) -> dict[str, Any]:
    return loadgen.run({"url": fake_url + path, "headers": AUTH, **spec}, cpu=None, timeout_s=30)


class TestFakeUpstream:
    def test_answers_in_openai_form_with_numbered_pieces(self, fake_url: str) -> None:
        status, text = post(fake_url + "/v1/chat/completions", chat_body("[[fake:chunks=3]] hi"))
        assert status == 200
        body = json.loads(text)
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == "c0 c1 c2 "
        assert body["usage"]["completion_tokens"] == 3

    def test_streams_usage_then_done(self, fake_url: str) -> None:
        payload = json.dumps(
            {
                "model": "m",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "[[fake:chunks=2]] hi"}],
            }
        )
        status, text = post(fake_url + "/v1/chat/completions", payload)
        events = [e.removeprefix("data: ") for e in text.strip().split("\n\n")]
        assert status == 200 and events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert [c["choices"][0]["delta"].get("content") for c in chunks[:3]] == ["", "c0 ", "c1 "]
        assert chunks[-1]["usage"]["completion_tokens"] == 2

    def test_failing_prefixes_and_refused_keys(self, fake_url: str) -> None:
        body = chat_body("hi")
        assert post(fake_url + "/fail/v1/chat/completions", body)[0] == 500
        # /fail2/: two failures, then one answer, again and again.
        assert [post(fake_url + "/fail2/v1/chat/completions", body)[0] for _ in range(6)] == [
            500,
            500,
            200,
            500,
            500,
            200,
        ]
        assert (
            post(fake_url + "/v1/chat/completions", body, {"authorization": "Bearer gw-nope"})[0]
            == 401
        )
        assert post(fake_url + "/v1/chat/completions", body, {})[0] == 401


class TestLoadGenerator:
    def test_closed_loop_counts_every_answer(self, fake_url: str) -> None:
        result = run(
            fake_url,
            mode="closed",
            body=chat_body("hi"),
            connections=4,
            duration_s=0.5,
            warmup_s=0.1,
        )
        assert result["errors"] == 0 and result["completed"] > 0
        assert result["statuses"] == {"200": result["completed"]}
        assert result["all_requests"] >= result["completed"]
        assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]

    def test_closed_loop_reports_errors(self, fake_url: str) -> None:
        result = run(
            fake_url,
            "/fail/v1/chat/completions",
            mode="closed",
            body=chat_body("hi"),
            connections=2,
            duration_s=0.3,
        )
        assert result["completed"] == 0 and result["errors"] > 0
        assert result["first_error"].startswith("500")

    def test_random_invalid_keys_with_an_expected_refusal(self, fake_url: str) -> None:
        result = run(
            fake_url,
            mode="closed",
            body=chat_body("hi"),
            connections=2,
            duration_s=0.3,
            random_key=True,
            expect_status=[401, 429],
        )
        assert result["completed"] > 0 and result["errors"] == 0
        assert set(result["statuses"]) == {"401"}

    def test_open_loop_sends_on_schedule(self, fake_url: str) -> None:
        bodies = [chat_body("[[fake:chunks=1]] a"), chat_body("[[fake:chunks=2]] b")]
        result = run(fake_url, mode="open", bodies=bodies, rate=40, duration_s=0.5, warmup_s=0.1)
        assert result["sent"] == 20 and result["completed"] == 20 and result["all_requests"] == 24
        # Measured from the intended start, so never shorter than the server's own time.
        assert result["latency_ms"]["p50"] >= result["service_ms"]["p50"]

    def test_streams_are_checked_chunk_by_chunk(self, fake_url: str) -> None:
        body = chat_body("[[fake:ttft_ms=20,chunks=5,chunk_delay_ms=2]] hi", stream=True)
        good = run(
            fake_url, mode="stream", body=body, connections=3, duration_s=0.4, expect_chunks=5
        )
        assert good["streams"] > 0 and good["fidelity"] == 1.0
        assert good["ttft_ms"]["p50"] >= 20
        assert good["gap_ms"]["count"] == 4 * good["faithful"]
        wrong = run(
            fake_url, mode="stream", body=body, connections=1, duration_s=0.2, expect_chunks=6
        )
        assert wrong["faithful"] == 0 and wrong["unfaithful"] == wrong["streams"] > 0

    def test_hold_opens_every_stream_and_says_so(self, fake_url: str) -> None:
        markers: list[str] = []
        body = chat_body("[[fake:ttft_ms=10,chunks=3,chunk_delay_ms=50]] hi", stream=True)
        result = loadgen.run(
            {
                "url": fake_url + "/v1/chat/completions",
                "headers": AUTH,
                "mode": "hold",
                "body": body,
                "connections": 30,
                "expect_chunks": 3,
            },
            cpu=None,
            on_marker=markers.append,
        )
        assert result["faithful"] == 30 and result["max_open"] == 30
        assert markers == ["ALL_OPEN"]

    def test_flood_keeps_ten_bad_requests_per_good_one(self, fake_url: str) -> None:
        result = run(
            fake_url,
            mode="flood",
            body=chat_body("hi"),
            connections=2,
            duration_s=0.5,
            warmup_s=0.1,
            bad={"ratio": 10, "max_inflight": 64},
        )
        assert result["good"]["errors"] == 0 and result["good"]["completed"] > 0
        assert set(result["bad"]["statuses"]) == {"401"}
        assert result["bad"]["sent"] >= 5 * result["good"]["completed"]
