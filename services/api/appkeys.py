"""Typed keys for what lives on the application and on each request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.auth import Authenticator, Principal
from services.api.admission import Admission
from services.api.key_events import KeyEventListener
from services.api.preferences import Preferences
from services.api.response_cache import ResponseCache
from services.api.replies import ReplyHub
from shared.catalog import Catalog
from shared.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis
else:
    from redis.asyncio import Redis

SETTINGS = web.AppKey("settings", Settings)
CATALOG = web.AppKey("catalog", Catalog)
REDIS = web.AppKey("redis", Redis)
SESSIONS = web.AppKey("sessions", async_sessionmaker[AsyncSession])
AUTH = web.AppKey("auth", Authenticator)
ADMISSION = web.AppKey("admission", Admission)
REPLIES = web.AppKey("replies", ReplyHub)
PREFERENCES = web.AppKey("preferences", Preferences)
KEY_EVENTS = web.AppKey("key_events", KeyEventListener)
RESPONSE_CACHE = web.AppKey("response_cache", ResponseCache)

# Per request: set by the auth step of the chat route, read by logs and admission.
PRINCIPAL_KEY = web.RequestKey("gw_principal", Principal)
REQUEST_ID_KEY = web.RequestKey("gw_request_id", str)

__all__ = [
    "ADMISSION", "AUTH", "CATALOG", "PRINCIPAL_KEY", "REDIS", "REPLIES", "REQUEST_ID_KEY",
    "SESSIONS", "SETTINGS", "Principal",
]  # fmt: skip
