"""POST /v1/chat/completions: authenticate, validate, admit, relay."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from aiohttp import web

from services.api.admission import Admitted
from services.api.access import cached_answer, model_allowed, serve_cached, store_answer
from services.api.appkeys import ADMISSION, AUTH, CATALOG, REDIS, REPLIES, REQUEST_ID_KEY
from services.api.appkeys import PREFERENCES, PRINCIPAL_KEY, SETTINGS
from services.api.metrics import chat_figures, request_summary
from services.api.relay import FrameReader, cancel_upstream, relay_json, relay_sse
from services.api.validation import ChatBody, parse_chat_body
from shared.capabilities import STREAMING
from shared.catalog import Catalog, Model
from shared.errors import GatewayError, InvalidRequest, ModelNotFound

log = structlog.get_logger("api.chat")


def resolve_model(catalog: Catalog, body: ChatBody) -> Model:
    """The catalog model asked for; 404 if unknown, 400 if it lacks what the request needs."""
    model = catalog.find(body.model)
    if model is None:
        raise ModelNotFound(
            f"The model '{body.model}' does not exist. GET /v1/models lists the model names "
            "(GET /v1/chat/models adds providers, prices and capabilities).",
            param="model",
        )
    for i, name in enumerate(body.fallback_models):
        if catalog.find(name) is None:
            raise ModelNotFound(f"The fallback model '{name}' does not exist.", param=f"models[{i}]")
    missing = sorted(body.needs - model.capabilities - {STREAMING})
    if missing:
        raise InvalidRequest(
            f"The model '{model.id}' does not support {', '.join(missing)}, which this request "
            "needs. GET /v1/chat/models lists each model's capabilities.",
            param="model",
            code="unsupported_capability",
        )
    return model


def rate_headers(admitted: Admitted) -> dict[str, str]:
    return admitted.rate.headers()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    app = request.app
    principal = await app[AUTH].authenticate(request)
    structlog.contextvars.bind_contextvars(user_id=principal.user_id, key_id=principal.key_id)
    request[PRINCIPAL_KEY] = principal
    raw = await request.read()
    body = parse_chat_body(raw)
    request_summary(request).update(model=body.model, stream=body.stream)
    if app[SETTINGS].log_prompts:  # LOG_PROMPTS=true, and only on debug lines
        log.debug("prompt_text", messages=body.messages)
    model = resolve_model(app[CATALOG], body)
    model_allowed(principal, app[CATALOG], model, body)
    cache_req, cached = await cached_answer(request, principal, body, raw)
    if cached is not None:
        return await serve_cached(request, principal, body.model, cached)

    request_id: str = request[REQUEST_ID_KEY]
    replies = app[REPLIES]
    queue = replies.register(request_id)  # before the job exists, so no frame is missed
    admitted: Admitted | None = None
    reader: FrameReader | None = None
    finished = False
    meta: Mapping[str, Any] = {}
    try:
        routing = await app[PREFERENCES].routing_for(principal.user_id)
        admitted = await app[ADMISSION].admit(
            principal, model, body, raw, request_id, routing=routing
        )
        headers = {**rate_headers(admitted), "x-request-id": request_id}
        reader = FrameReader(queue, admitted.job.deadline_ms)
        try:
            if body.stream:
                response, meta = await relay_sse(
                    request,
                    reader,
                    headers,
                    completion_id=f"chatcmpl-{request_id}",
                    model=body.model,
                )
            else:
                response, meta = await relay_json(reader, headers)
                await store_answer(request, cache_req, response, meta)
        except GatewayError as exc:
            exc.headers = {**headers, **exc.headers}
            raise
        finished = True
        return response
    finally:
        replies.unregister(request_id)
        if reader is not None:
            reader.close()
        # A job whose last frame never arrived is stopped, or the client pays for an
        # answer it never got: the client left, or the api ended the request itself (a
        # deadline, a lost reply channel, a worker that died mid-stream). A job that sent
        # its last frame, an error included, is over: cancelling it would only cost a
        # Redis round trip per refused request.
        if admitted is not None and not (reader is not None and reader.job_ended):
            cancel_upstream(app[REDIS], request_id, admitted.job.deadline_ms)
        # The request_finished line itself is logged by the metrics middleware.
        request_summary(request).update(
            chat_figures(
                meta,
                enqueued_ms=admitted.job.enqueued_ms if admitted is not None else None,
                finished=finished,
                admitted=admitted is not None,
            )
        )
