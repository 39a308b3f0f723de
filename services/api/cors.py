"""CORS for browser clients, off unless `CORS_ALLOW_ORIGINS` lists origins (or `*`).

Preflight `OPTIONS` requests are answered here, before routing and authentication (a
browser never sends credentials on a preflight). Actual answers get their
`Access-Control-*` headers in `on_response_prepare`, so streamed (SSE) answers and
error answers carry them too. Origins not listed get no CORS headers, which makes the
browser refuse the answer; the request itself is handled as any other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "authorization, content-type, x-api-key, x-gateway-cache, x-gateway-cache-ttl"
EXPOSED_HEADERS = (
    "x-request-id, retry-after, retry-after-ms, "
    "x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
    "x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens, "
    "x-gateway-cost, x-gateway-provider, x-gateway-cache"
)
PREFLIGHT_MAX_AGE_S = 600

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CorsPolicy:
    def __init__(self, origins: Iterable[str]) -> None:
        listed = {o.rstrip("/") for o in origins if o}
        self.any_origin = "*" in listed
        self.origins = frozenset(listed - {"*"})

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin.rstrip("/") in self.origins

    @web.middleware
    async def preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if (
            request.method != "OPTIONS"
            or origin is None
            or "Access-Control-Request-Method" not in request.headers
        ):
            return await handler(request)
        if not self.allows(origin):
            return web.Response(status=204, headers={"Vary": "Origin"})
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
                "Vary": "Origin",
            },
        )

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is None or not self.allows(origin):
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")


def setup_cors(app: web.Application, origins: Iterable[str]) -> CorsPolicy | None:
    """Install the policy on `app` when any origin is allowed; None (CORS off) otherwise."""
    policy = CorsPolicy(origins)
    if not (policy.any_origin or policy.origins):
        return None
    app.middlewares.insert(0, policy.preflight)
    app.on_response_prepare.append(policy.on_prepare)
    return policy
