"""GET /metrics, /health and /admin/stats/* through the real api application."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fakeredis.aioredis import FakeRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

from services.api.app import create_app
from services.api.appkeys import REDIS, REPLIES, SESSIONS
from services.api.replies import ReplyHub
from services.api.routes.health import gather_health
from services.runner import free_port
from shared.db.engine import create_engine, create_sessionmaker
from shared.redis import keys
from tests.integration.stats.conftest import ADMIN, api_settings
from tests.integration.stats.test_stats import seed
from tests.oracles import validate_openai
from tests.unit.metrics.helpers import value

Client = TestClient[web.Request, web.Application]

# The request-id middleware stores a plain string key on the request (aiohttp 3.14 warns).
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")


async def heartbeat(redis: FakeRedis, name: str = "worker-1", age_ms: int = 0) -> None:
    await redis.zadd(keys.WORKERS_HEARTBEAT, {name: int(time.time() * 1000) - age_ms})


class TestHealth:
    async def test_no_live_worker_is_503_and_a_heartbeat_makes_it_200(
        self, api: Client, fake_redis: FakeRedis
    ) -> None:
        resp = await api.get("/health")
        body = await resp.json()
        assert resp.status == 503 and body["status"] == "unavailable"
        assert body["workers"]["live"] == 0 and body["redis"]["ok"] is True

        await heartbeat(fake_redis, "stale", age_ms=60_000)  # not alive any more
        assert (await api.get("/health")).status == 503

        await heartbeat(fake_redis, "worker-1")
        await fake_redis.xgroup_create(keys.EVENTS_STREAM, keys.EVENTS_GROUP, id="0", mkstream=True)
        for i in range(3):
            await fake_redis.xadd(keys.EVENTS_STREAM, {"e": str(i)})
        resp = await api.get("/health")
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "ok"
        assert body["workers"]["live"] == 1
        assert [w["id"] for w in body["workers"]["ids"]] == ["worker-1"]
        assert body["billing"]["unsettled"] == 3 and body["billing"]["lag"] == 3
        assert body["jobs"]["backlog"] == 0
        assert body["database"] == {"ok": True}
        assert resp.headers["Cache-Control"] == "no-store"

    async def test_database_down_is_degraded_but_serving(
        self, tmp_path: Path, fake_redis: FakeRedis
    ) -> None:
        engine = create_engine(f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none")
        app = create_app(
            api_settings(tmp_path),
            redis_url="",
            redis=fake_redis,
            sessions=create_sessionmaker(engine),
        )
        await heartbeat(fake_redis)
        try:
            async with TestClient(TestServer(app)) as client:
                resp = await client.get("/health")
                body = await resp.json()
        finally:
            await engine.dispose()
        assert resp.status == 200 and body["status"] == "degraded"
        assert body["database"]["ok"] is False


    async def test_redis_unreachable_is_503(
        self, sqlite_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        unreachable = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
        app = web.Application()
        app[REDIS] = unreachable
        app[SESSIONS] = sqlite_sessions
        app[REPLIES] = ReplyHub(unreachable, "test")
        try:
            healthy, report = await gather_health(app)
        finally:
            await unreachable.aclose()
        assert healthy is False and report["status"] == "unavailable"
        assert report["redis"] == {"ok": False, "error": "ConnectionError"}
        assert report["database"] == {"ok": True}


class TestMetricsEndpoint:
    async def test_counts_requests_by_route_and_status(
        self, api: Client, fake_redis: FakeRedis
    ) -> None:
        await heartbeat(fake_redis)
        await api.get("/health")
        await api.get("/health")
        await api.get("/no/such/path?token=secret")
        resp = await api.post("/v1/chat/completions", json={"model": "gpt-4o-mini"})
        assert resp.status == 401
        resp = await api.get("/metrics")
        assert resp.status == 200
        text = await resp.text()
        assert value(text, "gateway_http_requests_total", method="GET", route="/health", code="200") == 2
        assert value(text, "gateway_http_requests_total", method="GET", route="unmatched", code="404") == 1
        assert (
            value(text, "gateway_http_requests_total", method="POST", route="/v1/chat/completions", code="401")
            == 1
        )
        assert value(text, "gateway_http_request_duration_seconds_count", method="GET", route="/health") == 2
        assert value(text, "gateway_workers_live") == 1
        assert value(text, "gateway_redis_up") == 1
        assert value(text, "gateway_in_flight_requests") == 0
        assert value(text, "gateway_http_requests_in_flight") == 1  # this scrape
        assert "secret" not in text

    async def test_every_request_gets_one_summary_line(self, api: Client) -> None:
        with capture_logs() as logs:
            await api.get("/v1/models")
            await api.post("/v1/chat/completions", json={"model": "gpt-4o-mini"})
        finished = [line for line in logs if line["event"] == "request_finished"]
        assert [(line["path"], line["status"]) for line in finished] == [
            ("/v1/models", 200),
            ("/v1/chat/completions", 401),
        ]
        assert all(isinstance(line["latency_ms"], float) for line in finished)


class TestAdminStats:
    async def test_reports_match_the_repository(
        self, api: Client, sqlite_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        alice, bob = await seed(sqlite_sessions)
        resp = await api.get("/admin/stats/providers", headers=ADMIN)
        assert resp.status == 200
        report = await resp.json()
        rows = {(r["provider"], r["model"]): r for r in report["providers"]}
        assert rows[("openai", "gpt-4o")]["success_rate"] == 0.625
        assert rows[("openai", "gpt-4o")]["latency_ms"] == {"p50": 300.0, "p90": 460.0, "p99": 496.0}
        assert rows[("openrouter", "gpt-4o")]["requests"] == 3

        spend = await (await api.get("/admin/stats/spend?group=user", headers=ADMIN)).json()
        assert [(r["user"], r["cost_usd"]) for r in spend["rows"]] == [
            (bob, "0.000007000"),
            (alice, "0.000005000"),
        ]
        assert spend["total"] == {"requests": 8, "cost_nusd": 12_000, "cost_usd": "0.000012000"}
        by_day = await (await api.get("/admin/stats/spend?group=day", headers=ADMIN)).json()
        assert len(by_day["rows"]) == 1 and by_day["rows"][0]["requests"] == 8

        traffic = await (await api.get("/admin/stats/traffic", headers=ADMIN)).json()
        assert sum(p["errors"] for p in traffic["points"]) == 2
        errors = await (await api.get("/admin/stats/errors?limit=2", headers=ADMIN)).json()
        assert [e["status"] for e in errors["errors"]] == ["error", "error"]
        assert errors["errors"][0]["attempts"][0]["status"] == 503

    async def test_a_range_in_the_past_is_empty(
        self, api: Client, sqlite_sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        await seed(sqlite_sessions)
        resp = await api.get(
            "/admin/stats/providers?from=2020-01-01&to=2020-01-02T00:00:00Z", headers=ADMIN
        )
        body = await resp.json()
        assert resp.status == 200
        assert body == {"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z", "providers": []}

    async def test_bad_parameters_are_400_in_openai_format(self, api: Client) -> None:
        cases = [
            ("/admin/stats/providers?from=yesterday", "from"),
            ("/admin/stats/providers?from=2026-01-02&to=2026-01-01", "from"),
            ("/admin/stats/spend?to=2026-13-01", "to"),
            ("/admin/stats/spend?group=planet", "group"),
            ("/admin/stats/traffic?bucket=minute", "bucket"),
            ("/admin/stats/errors?limit=0", "limit"),
            ("/admin/stats/spend?from=2020-01-01&to=2026-01-01", "from"),
        ]
        for path, param in cases:
            resp = await api.get(path, headers=ADMIN)
            body = await resp.json()
            assert resp.status == 400, path
            validate_openai("ErrorResponse", body)
            assert body["error"]["param"] == param, path

    async def test_admin_token_is_required(self, api: Client, tmp_path: Path, fake_redis: FakeRedis) -> None:
        assert (await api.get("/admin/stats/providers")).status == 401
        wrong = {"Authorization": "Bearer not-the-token"}
        assert (await api.get("/admin/stats/spend", headers=wrong)).status == 401
        app = create_app(
            api_settings(tmp_path, admin_token=""), redis_url="", redis=fake_redis
        )
        async with TestClient(TestServer(app)) as disabled:
            resp = await disabled.get("/admin/stats/providers", headers=ADMIN)
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "admin_disabled"
