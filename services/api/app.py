"""The api process: `create_app()` wires the aiohttp application; `run_api()` serves it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.admission import Admission
from services.api.appkeys import ADMISSION, AUTH, CATALOG, REDIS, REPLIES, SESSIONS, SETTINGS
from services.api.auth import Authenticator
from services.api.middlewares import request_context
from services.api.replies import ReplyHub
from services.api.routes.chat import chat_completions
from services.api.routes.health import health
from services.api.routes.models import get_model, list_models
from services.api.routes.providers import chat_health, chat_models
from shared.catalog import Catalog, catalog_for
from shared.db.engine import create_engine, create_sessionmaker
from shared.redis.funds import Funds
from shared.settings import Settings

log = structlog.get_logger("api")


def create_app(
    settings: Settings,
    *,
    redis_url: str,
    redis: Redis | None = None,
    sessions: async_sessionmaker[AsyncSession] | None = None,
    catalog: Catalog | None = None,
) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[request_context])
    app[SETTINGS] = settings
    demo_url = settings.provider_base_urls.get("fake") if settings.demo_mode else None
    app[CATALOG] = catalog or catalog_for(settings.catalog_path, demo_base_url=demo_url)

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        client = redis or Redis.from_url(redis_url, max_connections=None)
        app[REDIS] = client
        hub = ReplyHub(client, settings.process_id)
        await hub.start()
        app[REPLIES] = hub
        yield
        await hub.stop()
        if redis is None:
            await client.aclose()

    async def db_ctx(app: web.Application) -> AsyncIterator[None]:
        engine = None
        if sessions is None:
            engine = create_engine(settings.effective_database_url)
            app[SESSIONS] = create_sessionmaker(engine)
        else:
            app[SESSIONS] = sessions
        app[AUTH] = Authenticator(app[SESSIONS], cache_ttl_s=settings.cache_ttl_s)
        yield
        if engine is not None:
            await engine.dispose()

    async def admission_ctx(app: web.Application) -> AsyncIterator[None]:
        app[ADMISSION] = Admission(settings, Funds(app[REDIS]), app[SESSIONS])
        yield

    app.cleanup_ctx.extend([redis_ctx, db_ctx, admission_ctx])
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/chat/models", chat_models)
    app.router.add_get("/v1/chat/health", chat_health)
    return app


async def run_api(settings: Settings, redis_url: str, stop: asyncio.Event) -> None:
    app = create_app(settings, redis_url=redis_url)
    # handler_cancellation: a client that disconnects cancels its handler, which tells
    # the workers to stop the upstream call.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024, reuse_address=True)
    await site.start()
    log.info("api_listening", host=settings.host, port=settings.port, process_id=settings.process_id)
    try:
        await stop.wait()
    finally:
        log.info("api_stopping")
        await runner.cleanup()
