"""Request id and log context for every request; every error rendered once, OpenAI-style."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from services.api.appkeys import REQUEST_ID_KEY
from shared.errors import GatewayError, MethodNotAllowed, NotFound, PayloadTooLarge, InvalidRequest

log = structlog.get_logger("api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: GatewayError, request_id: str) -> web.Response:
    headers = {**error.headers, "x-request-id": request_id}
    return web.Response(
        status=error.http_status,
        body=error.to_body(),
        content_type="application/json",
        headers=headers,
    )


def _from_http_exception(exc: web.HTTPException) -> GatewayError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("The request body is too large.")
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("Unknown path. See /v1/chat/completions and /v1/models.")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"Method not allowed; use {', '.join(sorted(exc.allowed_methods))}.")
    return InvalidRequest(exc.reason or "Bad request.", status=exc.status, code=None)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = uuid.uuid4().hex
    request[REQUEST_ID_KEY] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id, service="api")
    try:
        response = await handler(request)
    except GatewayError as exc:
        if exc.http_status >= 500:
            log.warning("request_failed", status=exc.http_status, code=exc.code)
        return error_response(exc, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_from_http_exception(exc), request_id)
    except Exception:
        log.exception("unhandled_error", path=request.path)
        return error_response(GatewayError("The gateway hit an internal error."), request_id)
    if not response.prepared:
        response.headers["x-request-id"] = request_id
    return response
