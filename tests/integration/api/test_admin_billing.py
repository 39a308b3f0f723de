"""The admin API (users, keys, wallets, transactions, usage) and the account and
estimate endpoints, through the real api application on PostgreSQL and real Redis."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.app import create_app
from services.billing.settle import settle_batch
from shared.db.models import LedgerTransaction, UsageRecord
from shared.db.repositories import ledger
from shared.redis import keys
from shared.settings import Settings
from tests.integration.billing.events import completion_event
from tests.oracles import validate_openai

# The request-id middleware stores a plain string key on the request (not mine to change).
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

ADMIN_TOKEN = "admin-" + "k" * 32
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
Client = TestClient[Any, Any]


def settings(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(
        var_dir=tmp_path / "var", admin_token=ADMIN_TOKEN, demo_mode=True
    ).with_overrides(**changes)


@pytest_asyncio.fixture
async def api(
    tmp_path: Path, redis: Redis, redis_url: str, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Client]:
    app = create_app(settings(tmp_path), redis_url=redis_url, redis=redis, sessions=sessions)
    async with TestClient(TestServer(app)) as client:
        yield client


async def new_user(api: Client, credit: str | None = None) -> tuple[str, str]:
    resp = await api.post(
        "/admin/users", json={"email": "u@example.com", "name": "U"}, headers=ADMIN
    )
    assert resp.status == 201
    user_id = (await resp.json())["id"]
    resp = await api.post(f"/admin/users/{user_id}/keys", json={"name": "k"}, headers=ADMIN)
    assert resp.status == 201
    key = (await resp.json())["key"]
    if credit:
        resp = await api.post(
            f"/admin/users/{user_id}/wallet/credit",
            json={"amount": credit, "idempotency_key": f"seed-{user_id}"},
            headers=ADMIN,
        )
        assert resp.status == 201
    return user_id, key


async def counts(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, int]:
    async with sessions() as s:
        tx = await s.scalar(select(func.count()).select_from(LedgerTransaction))
        rows = await s.scalar(select(func.count()).select_from(UsageRecord))
    return int(tx or 0), int(rows or 0)


class TestGuard:
    ROUTES = (
        ("POST", "/admin/users"),
        ("GET", "/admin/users"),
        ("GET", "/admin/users/usr_x/wallet"),
        ("POST", "/admin/users/usr_x/wallet/credit"),
        ("GET", "/admin/transactions"),
        ("GET", "/admin/usage/summary"),
        ("GET", "/admin/usage/export.csv"),
        ("POST", "/admin/keys/key_x/revoke"),
    )

    async def test_refused_without_or_with_a_wrong_token(self, api: Client) -> None:
        for method, path in self.ROUTES:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": ADMIN_TOKEN}):
                resp = await api.request(method, path, headers=headers)
                assert resp.status == 401, (method, path, headers)
                validate_openai("ErrorResponse", await resp.json())

    async def test_refused_when_admin_is_disabled(
        self,
        tmp_path: Path,
        redis: Redis,
        redis_url: str,
        sessions: async_sessionmaker[AsyncSession],
    ) -> None:
        app = create_app(
            settings(tmp_path, admin_token=""), redis_url=redis_url, redis=redis, sessions=sessions
        )
        async with TestClient(TestServer(app)) as client:
            for method, path in self.ROUTES:
                resp = await client.request(method, path, headers=ADMIN)
                assert resp.status == 403, (method, path)
                assert (await resp.json())["error"]["code"] == "admin_disabled"


class TestUsersAndKeys:
    async def test_create_get_list_and_revoke(self, api: Client) -> None:
        user_id, key = await new_user(api)
        user = await (await api.get(f"/admin/users/{user_id}", headers=ADMIN)).json()
        assert user["email"] == "u@example.com" and user["wallet"]["balance_nusd"] == 0
        listed = await (await api.get("/admin/users?limit=10", headers=ADMIN)).json()
        assert user_id in [u["id"] for u in listed["data"]]
        assert (await api.get("/admin/users/usr_missing", headers=ADMIN)).status == 404

        mine = {"Authorization": f"Bearer {key}"}
        assert (await api.get("/v1/wallet", headers=mine)).status == 200
        keys_listed = await (await api.get(f"/admin/users/{user_id}/keys", headers=ADMIN)).json()
        [row] = keys_listed["data"]
        assert row["status"] == "active" and "key" not in row and key not in str(keys_listed)

        revoked = await api.post(f"/admin/keys/{row['id']}/revoke", headers=ADMIN)
        assert revoked.status == 200 and (await revoked.json())["status"] == "revoked"
        assert (await api.get("/v1/wallet", headers=mine)).status == 401
        assert (await api.post("/admin/keys/key_nope/revoke", headers=ADMIN)).status == 404

    async def test_bad_key_options_are_400(self, api: Client) -> None:
        user_id, _ = await new_user(api)
        for body in (
            {"expires_days": 0},
            {"rate_limit_rpm": "x"},
            {"allowed_models": "gpt"},
            {"name": 5},
        ):
            resp = await api.post(f"/admin/users/{user_id}/keys", json=body, headers=ADMIN)
            assert resp.status == 400, body


class TestWallet:
    async def test_credit_adjust_refund_once_per_key_and_exact(
        self, api: Client, redis: Redis, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        user_id, _ = await new_user(api)
        base = f"/admin/users/{user_id}/wallet"
        await redis.set(keys.balance(user_id), 0)  # a cached balance, as admission keeps it

        first = await api.post(
            f"{base}/credit",
            json={"amount": "10.000000001", "idempotency_key": "c1"},
            headers=ADMIN,
        )
        assert first.status == 201
        assert (await first.json())["transaction"]["amount_nusd"] == 10_000_000_001
        assert await redis.get(keys.balance(user_id)) is None  # invalidated at once
        again = await api.post(
            f"{base}/credit",
            json={"amount": "10.000000001"},
            headers={**ADMIN, "Idempotency-Key": "c1"},
        )
        assert again.status == 200 and (await again.json())["created"] is False
        clash = await api.post(
            f"{base}/credit", json={"amount": "5", "idempotency_key": "c1"}, headers=ADMIN
        )
        assert (
            clash.status == 409
            and (await clash.json())["error"]["code"] == "idempotency_key_reused"
        )

        adj = await api.post(
            f"{base}/adjustment",
            json={"amount": "-0.5", "idempotency_key": "a1", "reason": "goodwill error"},
            headers=ADMIN,
        )
        assert adj.status == 201
        ref = await api.post(
            f"{base}/refund",
            json={
                "amount_nusd": 250,
                "idempotency_key": "r1",
                "reason": "bad answer",
                "request_id": "req_1",
            },
            headers=ADMIN,
        )
        assert ref.status == 201 and (await ref.json())["transaction"]["request_id"] == "req_1"

        wallet = await (await api.get(base, headers=ADMIN)).json()
        expected = 10_000_000_001 - 500_000_000 + 250
        assert wallet["balance_nusd"] == wallet["ledger_sum_nusd"] == expected
        assert wallet["balance"] == "9.500000251" and wallet["available_nusd"] == expected

    async def test_bad_movements_change_nothing(
        self, api: Client, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        user_id, _ = await new_user(api)
        base = f"/admin/users/{user_id}/wallet"
        before = await counts(sessions)
        bad = [
            ("credit", {"amount": 1.5, "idempotency_key": "x"}),  # a float: not exact
            ("credit", {"amount": "1e999999", "idempotency_key": "x"}),
            ("credit", {"amount": "0.0000000001", "idempotency_key": "x"}),  # finer than 1 nUSD
            ("credit", {"amount": "-1", "idempotency_key": "x"}),
            ("credit", {"amount": "abc", "idempotency_key": "x"}),
            ("credit", {"amount": "1"}),  # no idempotency key
            ("adjustment", {"amount": "1", "idempotency_key": "x"}),  # no reason
            ("adjustment", {"amount": "0", "idempotency_key": "x", "reason": "r"}),
            ("refund", {"amount": "1", "idempotency_key": "x"}),  # no reason
        ]
        for action, body in bad:
            resp = await api.post(f"{base}/{action}", json=body, headers=ADMIN)
            assert resp.status == 400, (action, body)
            validate_openai("ErrorResponse", await resp.json())
        resp = await api.post(f"{base}/credit", data=b"{not json", headers=ADMIN)
        assert resp.status == 400
        resp = await api.post(
            "/admin/users/usr_nobody/wallet/credit",
            json={"amount": "1", "idempotency_key": "y"},
            headers=ADMIN,
        )
        assert resp.status == 404
        assert await counts(sessions) == before


class TestTransactionsAndUsage:
    async def _seed(
        self, api: Client, sessions: async_sessionmaker[AsyncSession]
    ) -> tuple[str, str, list[Any]]:
        user_id, key = await new_user(api, credit="1")
        events = [completion_event(user_id, cost_nusd=1000 * (i + 1)) for i in range(5)]
        async with sessions.begin() as s:
            await settle_batch(s, events)
        return user_id, key, events

    async def test_transactions_are_paged_and_filtered(
        self, api: Client, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        user_id, _, events = await self._seed(api, sessions)
        seen: list[dict[str, Any]] = []
        url = f"/admin/transactions?user_id={user_id}&limit=2"
        while url:
            body = await (await api.get(url, headers=ADMIN)).json()
            seen += body["data"]
            cursor = body["next_cursor"]
            url = f"/admin/transactions?user_id={user_id}&limit=2&cursor={cursor}" if cursor else ""
        assert len(seen) == 6 and len({t["id"] for t in seen}) == 6
        assert [t["id"] for t in seen] == sorted((t["id"] for t in seen), reverse=True)
        debits = await (
            await api.get(f"/admin/transactions?user_id={user_id}&kind=debit", headers=ADMIN)
        ).json()
        assert sorted(-t["amount_nusd"] for t in debits["data"]) == [e.cost_nusd for e in events]
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
        future = await (await api.get(f"/admin/transactions?from={tomorrow}", headers=ADMIN)).json()
        assert future["data"] == [] and future["next_cursor"] is None
        for bad in (
            "kind=loan",
            "from=yesterday",
            "limit=0",
            "cursor=abc",
            "from=2025-02-01&to=2025-01-01",
        ):
            assert (await api.get(f"/admin/transactions?{bad}", headers=ADMIN)).status == 400, bad

    async def test_usage_summary_csv_and_the_users_own_view(
        self, api: Client, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        user_id, key, events = await self._seed(api, sessions)
        total = sum(e.cost_nusd for e in events)
        summary = await (await api.get(
            f"/admin/usage/summary?group_by=user,model,provider,day&user_id={user_id}", headers=ADMIN
        )).json()  # fmt: skip
        [row] = summary["data"]
        assert (
            row["user"] == user_id and row["model"] == "gpt-4o-mini" and row["provider"] == "openai"
        )
        assert row["day"] == datetime.now(UTC).date().isoformat()
        assert row["requests"] == 5 and row["cost_nusd"] == total and row["prompt_tokens"] == 500
        assert (await api.get("/admin/usage/summary?group_by=planet", headers=ADMIN)).status == 400

        resp = await api.get(f"/admin/usage/export.csv?user_id={user_id}", headers=ADMIN)
        assert resp.status == 200 and resp.content_type == "text/csv"
        rows = list(csv.DictReader(io.StringIO(await resp.text())))
        assert sorted(r["request_id"] for r in rows) == sorted(e.request_id for e in events)
        assert sum(int(r["cost_nusd"]) for r in rows) == total

        mine = {"Authorization": f"Bearer {key}"}
        wallet = await (await api.get("/v1/wallet", headers=mine)).json()
        assert wallet["balance_nusd"] == 10**9 - total
        assert len(wallet["transactions"]) == 6
        usage = await (await api.get("/v1/usage?group_by=day&limit=3", headers=mine)).json()
        assert usage["totals"]["cost_nusd"] == total and usage["totals"]["requests"] == 5
        assert len(usage["data"]) == 3 and usage["next_cursor"] is not None
        assert usage["summary"][0]["requests"] == 5
        assert (await api.get("/v1/usage")).status == 401
        assert (await api.get("/v1/usage?group_by=user", headers=mine)).status == 400


class TestEstimate:
    BODY: ClassVar[dict[str, Any]] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "How much would this cost?"}],
        "max_tokens": 100,
    }

    async def test_estimate_queues_holds_and_bills_nothing(
        self, api: Client, redis: Redis, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        user_id, key = await new_user(api, credit="0.5")
        mine = {"Authorization": f"Bearer {key}"}
        before = await counts(sessions)
        resp = await api.post("/v1/chat/estimate", json=self.BODY, headers=mine)
        assert resp.status == 200
        body = await resp.json()
        # o200k: "How much would this cost?" is 6 tokens; + 3 framing + 1 role + 3 priming.
        assert body["prompt_tokens"] == 13 and body["prompt_tokens_exact"] is True
        assert body["max_completion_tokens"] == 100
        # In demo mode every offer is served by the fake provider, at the catalog's prices.
        for offer in body["providers"]:
            assert offer["min_cost_nusd"] == 13 * 150  # $0.15 / Mtok input
            assert offer["max_cost_nusd"] == 13 * 150 + 100 * 600  # + $0.60 / Mtok output
            assert offer["max_cost"] == "0.000061950"
        assert body["covers_max_cost"] is True and body["would_admit"] is True
        assert body["wallet"]["available_nusd"] == 5 * 10**8

        assert await counts(sessions) == before
        assert await redis.exists(keys.JOBS_STREAM) == 0
        assert await redis.hlen(keys.holds(user_id)) == 0  # type: ignore[misc]

    async def test_estimate_validates_like_a_completion(self, api: Client) -> None:
        _, key = await new_user(api)
        mine = {"Authorization": f"Bearer {key}"}
        assert (await api.post("/v1/chat/estimate", json=self.BODY)).status == 401
        bad = await api.post(
            "/v1/chat/estimate", json={**self.BODY, "temperature": 9}, headers=mine
        )
        assert bad.status == 400 and (await bad.json())["error"]["param"] == "temperature"
        missing = await api.post(
            "/v1/chat/estimate", json={**self.BODY, "model": "nope"}, headers=mine
        )
        assert missing.status == 404
        poor = await (await api.post("/v1/chat/estimate", json=self.BODY, headers=mine)).json()
        assert poor["covers_max_cost"] is False and poor["would_admit"] is False


@pytest.mark.parametrize("amount", ["1", "0.000000001", "123456.789012345"])
def test_amounts_render_exactly(amount: str) -> None:
    from services.api.admin_params import amount_nusd
    from shared.money import format_usd

    assert format_usd(amount_nusd({"amount": amount})).rstrip("0").rstrip(".") == amount.rstrip(
        "0"
    ).rstrip(".")
    assert ledger.LedgerKind("refund") is ledger.LedgerKind.REFUND


class TestMinimalFund:
    async def test_below_the_minimal_fund_is_402_and_changes_nothing(
        self,
        tmp_path: Path,
        redis: Redis,
        redis_url: str,
        sessions: async_sessionmaker[AsyncSession],
    ) -> None:
        strict = settings(tmp_path, minimal_fund_nusd=5 * 10**7)  # MINIMAL_FUND=0.05
        app = create_app(strict, redis_url=redis_url, redis=redis, sessions=sessions)
        async with TestClient(TestServer(app)) as client:
            user_id, key = await new_user(client, credit="0.049")
            mine = {"Authorization": f"Bearer {key}"}
            body = {**TestEstimate.BODY, "max_tokens": 1}  # at most a few nano-dollars
            resp = await client.post("/v1/chat/completions", json=body, headers=mine)
            assert resp.status == 402
            error = (await resp.json())["error"]
            assert error["code"] == "insufficient_quota" and "minimal fund" in error["message"]
            assert await redis.exists(keys.JOBS_STREAM) == 0  # nothing queued
            assert await redis.hlen(keys.holds(user_id)) == 0  # type: ignore[misc]

            estimate = await (
                await client.post("/v1/chat/estimate", json=body, headers=mine)
            ).json()
            assert estimate["covers_max_cost"] is True and estimate["would_admit"] is False
            await client.post(
                f"/admin/users/{user_id}/wallet/credit",
                json={"amount": "0.001", "idempotency_key": "top-up"},
                headers=ADMIN,
            )
            estimate = await (
                await client.post("/v1/chat/estimate", json=body, headers=mine)
            ).json()
            assert estimate["would_admit"] is True
