"""The dashboard's browser session: a cookie that proves its holder knew the admin token.

A browser cannot send `Authorization: Bearer` when it navigates, so the dashboard's
login form takes the token once (in a POST body: never in a URL, where proxies and
history would keep it) and sets a cookie holding

    <expires_unix>.<HMAC-SHA256(key=ADMIN_TOKEN, "gw-admin-session:<expires_unix>")>

The token itself is never stored in the browser. The cookie is HttpOnly (no script
reads it), SameSite=Strict (no other site's page can make the browser send it),
limited to /admin, Secure when the request came over HTTPS, and expires after
SESSION_TTL_S. Changing ADMIN_TOKEN invalidates every session at once.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from aiohttp import web

COOKIE_NAME = "gw_admin"
COOKIE_PATH = "/admin"
SESSION_TTL_S = 8 * 3600
_PURPOSE = "gw-admin-session:"


def _signature(admin_token: str, expires: int) -> str:
    message = f"{_PURPOSE}{expires}".encode()
    return hmac.new(admin_token.encode(), message, hashlib.sha256).hexdigest()


def issue(admin_token: str, *, now: float | None = None, ttl_s: int = SESSION_TTL_S) -> str:
    """A cookie value valid for `ttl_s` seconds."""
    expires = int(now if now is not None else time.time()) + ttl_s
    return f"{expires}.{_signature(admin_token, expires)}"


def verify(admin_token: str, value: str, *, now: float | None = None) -> bool:
    """Whether `value` was issued with this admin token and has not expired."""
    if not admin_token:
        return False
    expires_raw, dot, signature = value.partition(".")
    if not dot or not expires_raw.isdigit() or len(expires_raw) > 12:
        return False
    expires = int(expires_raw)
    if expires <= (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(signature.encode(), _signature(admin_token, expires).encode())


def token_matches(admin_token: str, candidate: str) -> bool:
    """Constant-time comparison of a submitted token with the configured one."""
    return bool(admin_token) and hmac.compare_digest(candidate.encode(), admin_token.encode())


def set_cookie(response: web.StreamResponse, request: web.Request, admin_token: str) -> None:
    response.set_cookie(
        COOKIE_NAME,
        issue(admin_token),
        max_age=SESSION_TTL_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def clear_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE_NAME, path=COOKIE_PATH)


def has_session(request: web.Request, admin_token: str) -> bool:
    return verify(admin_token, request.cookies.get(COOKIE_NAME, ""))
