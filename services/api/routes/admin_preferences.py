"""GET, PUT and DELETE /admin/users/{user_id}/preferences: a user's routing defaults.

The body of PUT is the shape of a request's `provider` object:
{"order": [...], "only": [...], "ignore": [...], "allow_fallbacks": bool, "sort": "price"}
"""

from __future__ import annotations

import orjson
from aiohttp import web

from services.api.admin_auth import require_admin
from services.api.appkeys import PREFERENCES, SESSIONS
from services.api.validation import validate_provider_prefs
from shared.db.repositories.preferences import get_routing, set_routing
from shared.db.repositories.users import get_user
from shared.errors import InvalidRequest, NotFound


async def _user_id(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    async with request.app[SESSIONS]() as session:
        if await get_user(session, user_id) is None:
            raise NotFound(f"No user '{user_id}'.", code="user_not_found")
    return user_id


def _json(data: object) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


async def get_preferences(request: web.Request) -> web.Response:
    require_admin(request)
    user_id = await _user_id(request)
    async with request.app[SESSIONS]() as session:
        routing = await get_routing(session, user_id)
    return _json({"user_id": user_id, "provider": routing or {}})


async def put_preferences(request: web.Request) -> web.Response:
    require_admin(request)
    user_id = await _user_id(request)
    try:
        routing = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("The body must be a JSON object.", code="invalid_json") from exc
    validate_provider_prefs(routing)
    async with request.app[SESSIONS].begin() as session:
        await set_routing(session, user_id, routing or None)
    request.app[PREFERENCES].forget(user_id)
    return _json({"user_id": user_id, "provider": routing or {}})


async def delete_preferences(request: web.Request) -> web.Response:
    require_admin(request)
    user_id = await _user_id(request)
    async with request.app[SESSIONS].begin() as session:
        await set_routing(session, user_id, None)
    request.app[PREFERENCES].forget(user_id)
    return _json({"user_id": user_id, "provider": {}})


def add_routes(app: web.Application) -> None:
    path = "/admin/users/{user_id}/preferences"
    app.router.add_get(path, get_preferences)
    app.router.add_put(path, put_preferences)
    app.router.add_delete(path, delete_preferences)
