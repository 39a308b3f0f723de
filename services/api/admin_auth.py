"""The admin guard: `Authorization: Bearer $ADMIN_TOKEN`, compared in constant time."""

from __future__ import annotations

import hmac

from aiohttp import web

from services.api.appkeys import SETTINGS
from shared.errors import Forbidden, Unauthorized


def require_admin(request: web.Request) -> None:
    """Raise unless the request carries the admin token. No token configured: admin is off."""
    expected = request.app[SETTINGS].admin_token
    if not expected:
        raise Forbidden("The admin API is disabled: set ADMIN_TOKEN to enable it.", code="admin_disabled")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("A valid admin token is required.", code="invalid_admin_token")
