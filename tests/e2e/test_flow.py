"""One request end to end, through real processes, with the official OpenAI SDK."""

from __future__ import annotations

import signal
import time
from decimal import Decimal

import openai
import orjson
import pytest

from shared.money import usd_to_nusd
from tests.e2e.conftest import Stack, http
from tests.oracles import validate_openai

FAKE_TEXT_START = "Hello"


def client_for(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=stack.api_url + "/v1", max_retries=0, timeout=30)


def usage_rows(stack: Stack, *request_ids: str) -> list[object]:
    return stack.query(
        "SELECT * FROM usage_records WHERE request_id = ANY($1::text[])", list(request_ids)
    )


def wait_settled(stack: Stack, *request_ids: str) -> list[object]:
    return stack.wait_until(
        lambda: (rows := usage_rows(stack, *request_ids)) and len(rows) == len(request_ids) and rows,
        what=f"billing to settle {request_ids}",
    )


def balance(stack: Stack, user_id: str) -> int:
    return int(stack.query("SELECT balance_nusd FROM wallets WHERE user_id = $1", user_id)[0][0])


def ledger_sum(stack: Stack, user_id: str) -> int:
    rows = stack.query(
        "SELECT COALESCE(SUM(amount_nusd), 0) FROM ledger_transactions WHERE user_id = $1", user_id
    )
    return int(rows[0][0])


class TestCompletionFlow:
    def test_non_streaming_then_streaming_are_billed_once(self, stack: Stack) -> None:
        user_id, key = stack.new_funded_user("10")
        client = client_for(stack, key)

        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there"}]
        )
        completion = raw.parse()
        validate_openai("CreateChatCompletionResponse", orjson.loads(raw.content))
        answer = completion.choices[0].message.content
        assert answer and answer.startswith(FAKE_TEXT_START)
        assert completion.choices[0].finish_reason == "stop"
        assert completion.model == "gpt-4o-mini"
        plain_id = raw.headers["x-request-id"]
        plain_cost = usd_to_nusd(Decimal(raw.headers["x-gateway-cost"]))
        assert plain_cost > 0
        assert int(raw.headers["x-ratelimit-remaining-requests"]) >= 0

        stream_raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hello there"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        stream_id = stream_raw.headers["x-request-id"]
        pieces, usage = [], None
        for chunk in stream_raw.parse():
            validate_openai("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert "".join(pieces) == answer  # the same answer, streamed
        assert usage is not None and usage.completion_tokens > 0

        rows = {r["request_id"]: r for r in wait_settled(stack, plain_id, stream_id)}
        assert rows[plain_id]["cost_nusd"] == plain_cost
        assert rows[plain_id]["stream"] is False and rows[stream_id]["stream"] is True
        assert rows[stream_id]["completion_tokens"] == usage.completion_tokens
        assert rows[stream_id]["provider"] == "fake"
        debits = stack.query(
            "SELECT request_id, amount_nusd FROM ledger_transactions WHERE kind = 'debit' AND user_id = $1",
            user_id,
        )
        assert {d["request_id"]: -d["amount_nusd"] for d in debits} == {
            plain_id: plain_cost,
            stream_id: rows[stream_id]["cost_nusd"],
        }
        assert balance(stack, user_id) == usd_to_nusd("10") - plain_cost - rows[stream_id]["cost_nusd"]
        assert balance(stack, user_id) == ledger_sum(stack, user_id)

    def test_billing_restart_settles_missed_events_once(self, stack: Stack) -> None:
        user_id, key = stack.new_funded_user("5")
        client = client_for(stack, key)
        stack.kill("billing", signal.SIGKILL)
        ids = []
        for _ in range(3):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "count me"}]
            )
            ids.append(raw.headers["x-request-id"])
        time.sleep(0.5)
        assert usage_rows(stack, *ids) == []  # nobody settled them yet

        stack.start_service("billing")
        rows = wait_settled(stack, *ids)
        assert sorted(r["request_id"] for r in rows) == sorted(ids)
        debits = stack.query(
            "SELECT count(*) FROM ledger_transactions WHERE request_id = ANY($1::text[])", ids
        )
        assert debits[0][0] == 3
        assert balance(stack, user_id) == ledger_sum(stack, user_id)
        assert balance(stack, user_id) == usd_to_nusd("5") - sum(r["cost_nusd"] for r in rows)


class TestRefusals:
    def _counts(self, stack: Stack) -> tuple[int, int]:
        usage = stack.query("SELECT count(*) FROM usage_records")[0][0]
        ledger = stack.query("SELECT count(*) FROM ledger_transactions")[0][0]
        return int(usage), int(ledger)

    def test_bad_requests_get_openai_errors_and_change_nothing(self, stack: Stack) -> None:
        _user, key = stack.new_funded_user("1")
        client = client_for(stack, key)
        before = self._counts(stack)

        with pytest.raises(openai.AuthenticationError):
            client_for(stack, "gw-not-a-real-key").chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "x"}]
            )
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], temperature=7
            )
        assert bad.value.body["param"] == "temperature"  # type: ignore[index]

        for raw_body in (b"{", b"[]", b'{"model": "gpt-4o-mini"}', b"\xff\xfe"):
            status, error = http(
                "POST",
                stack.api_url + "/v1/chat/completions",
                raw_body,
                {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            assert status == 400, raw_body
            validate_openai("ErrorResponse", error)
        status, error = http(
            "POST",
            stack.api_url + "/v1/chat/completions",
            b"x" * (9 * 1024 * 1024),
            {"Authorization": f"Bearer {key}"},
        )
        assert status == 413
        validate_openai("ErrorResponse", error)
        assert self._counts(stack) == before

    def test_unfunded_wallet_gets_402(self, stack: Stack) -> None:
        _user, key = stack.new_funded_user("0")
        with pytest.raises(openai.APIStatusError) as info:
            client_for(stack, key).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.status_code == 402
        assert info.value.code == "insufficient_quota"

    def test_models_and_health(self, stack: Stack) -> None:
        _user, key = stack.new_funded_user("0")
        models = client_for(stack, key).models.list()
        assert "gpt-4o-mini" in {m.id for m in models.data}
        _status, health = http("GET", stack.api_url + "/health")
        assert health["status"] == "ok" and health["workers"]["live"] >= 1
