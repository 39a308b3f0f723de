"""The api process: `create_app()` wires the aiohttp application; `run_api()` serves it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.admission import Admission
from services.api.appkeys import ADMISSION, AUTH, CATALOG, REDIS, REPLIES, SESSIONS, SETTINGS
from services.api.auth import Authenticator
from services.api.appkeys import KEY_EVENTS, PREFERENCES, RESPONSE_CACHE
from services.api.preferences import Preferences
from services.api.access import rate_headers_on_refusal
from services.api.cors import setup_cors
from services.api.jwt_auth import JwtVerifier
from services.api.key_events import KeyEventListener
from services.api.response_cache import ResponseCache
from services.api.middlewares import request_context
from services.api.replies import ReplyHub
from services.api.routes.chat import chat_completions
from services.api.routes import account, admin, admin_usage, estimate
from services.api.routes import admin_stats, dashboard
from services.api.routes import admin_preferences, openapi
from services.api.routes.health import health
from services.api.routes.metrics import setup_metrics
from services.api.routes.models import get_model, list_models
from services.api.routes.providers import chat_health, chat_models
from shared.catalog import Catalog, catalog_for
from shared.db.engine import create_engine, create_sessionmaker
from shared.key_secret import load_key_secret
from shared.redis import keys
from shared.redis.client import redis_client
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
    setup_metrics(app)  # GET /metrics; counts every request, logs its summary line

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        client = redis or redis_client(redis_url)
        app[REDIS] = client
        yield
        if redis is None:
            await client.aclose()

    async def db_ctx(app: web.Application) -> AsyncIterator[None]:
        engine = None
        if sessions is None:
            engine = create_engine(settings.effective_database_url)
            app[SESSIONS] = create_sessionmaker(engine)
        else:
            app[SESSIONS] = sessions
        key_secret = load_key_secret(settings)
        if key_secret.source == "file" and settings.database_url:
            log.warning("api_key_hash_secret_unset", hint="set API_KEY_HASH_SECRET in production")
        app[AUTH] = Authenticator(
            app[SESSIONS],
            cache_ttl_s=settings.cache_ttl_s,
            key_secret=key_secret.value,
            jwt=JwtVerifier(
                supabase_url=settings.supabase_url,
                jwt_secret=settings.supabase_jwt_secret,
                anon_key=settings.supabase_anon_key,
                cache_ttl_s=settings.cache_ttl_s,
            ),
            unknown_lookups_per_s=settings.auth_unknown_key_lookups_per_s,
        )
        flusher = asyncio.create_task(app[AUTH].run_last_used_flusher())
        yield
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await app[AUTH].close()
        if engine is not None:
            await engine.dispose()

    async def admission_ctx(app: web.Application) -> AsyncIterator[None]:
        app[ADMISSION] = Admission(settings, Funds(app[REDIS]), app[SESSIONS])
        app[PREFERENCES] = Preferences(app[SESSIONS], ttl_s=settings.cache_ttl_s)
        yield

    async def access_ctx(app: web.Application) -> AsyncIterator[None]:
        # One pub/sub connection per process carries reply frames and key revocations.
        listener = KeyEventListener(app[AUTH])
        hub = ReplyHub(
            app[REDIS], settings.process_id, channels={keys.KEY_EVENTS_CHANNEL: listener}
        )
        await hub.start()
        app[KEY_EVENTS] = listener
        app[REPLIES] = hub
        app[RESPONSE_CACHE] = ResponseCache(app[REDIS])
        yield
        await hub.stop()

    app.cleanup_ctx.extend([redis_ctx, db_ctx, admission_ctx, access_ctx])
    app.middlewares.append(rate_headers_on_refusal)
    setup_cors(app, settings.cors_allow_origins)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/chat/models", chat_models)
    app.router.add_get("/v1/chat/health", chat_health)
    admin_preferences.add_routes(app)
    admin_stats.add_routes(app.router)
    dashboard.add_routes(app.router)
    openapi.add_routes(app.router)  # GET /openapi.json
    for routes in (estimate, account, admin, admin_usage):
        routes.add_routes(app.router)
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
