"""GET /v1/models and GET /v1/models/{model}: the catalog, in OpenAI's list format."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from services.api.appkeys import CATALOG
from shared.catalog import Model
from shared.errors import ModelNotFound

# The catalog has no creation dates; a fixed epoch keeps answers stable.
CREATED = 1_700_000_000


def model_object(model: Model) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": CREATED, "owned_by": model.owned_by}


async def list_models(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    data = [model_object(m) for m in catalog.models]
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
    )


async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    model = request.app[CATALOG].find(name)
    if model is None:
        raise ModelNotFound(f"The model '{name}' does not exist.", param="model")
    return web.Response(body=orjson.dumps(model_object(model)), content_type="application/json")
