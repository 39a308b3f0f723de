"""GET /v1/chat/models (catalog with providers, prices, capabilities) and
GET /v1/chat/health (live statistics and circuit state per provider and model)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from services.api.appkeys import CATALOG, REDIS, SETTINGS
from shared.catalog import Catalog
from shared.circuit import Circuits
from shared.errors import ServiceUnavailable
from shared.provider_access import provider_access
from shared.provider_stats import read_stats


def _enabled(request: web.Request) -> set[str]:
    return set(provider_access(request.app[CATALOG], request.app[SETTINGS]))


def catalog_document(catalog: Catalog, enabled: set[str]) -> dict[str, Any]:
    models = []
    for model in catalog.models:
        models.append(
            {
                "id": model.id,
                "object": "model",
                "owned_by": model.owned_by,
                "aliases": list(model.aliases),
                "capabilities": sorted(model.capabilities | {"streaming"}),
                "providers": [
                    {
                        "provider": offer.provider,
                        "upstream_model": offer.upstream_model,
                        "available": offer.provider in enabled,
                        "pricing_usd_per_million_tokens": {
                            "input": str(offer.price.input_per_mtok),
                            "output": str(offer.price.output_per_mtok),
                            "cached_input": (
                                None
                                if offer.price.cached_input_per_mtok is None
                                else str(offer.price.cached_input_per_mtok)
                            ),
                        },
                        "context_window": offer.context_window,
                        "max_output_tokens": offer.max_output_tokens,
                    }
                    for offer in model.offers
                ],
            }
        )
    return {"object": "list", "data": models}


async def chat_models(request: web.Request) -> web.Response:
    document = catalog_document(request.app[CATALOG], _enabled(request))
    return web.Response(body=orjson.dumps(document), content_type="application/json")


async def chat_health(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    enabled = _enabled(request)
    targets = sorted(
        {(o.provider, m.id) for m in catalog.models for o in m.offers if o.provider in enabled}
    )
    redis = request.app[REDIS]
    try:
        stats = await read_stats(redis, targets)
        circuits = await Circuits(redis).read(targets)
    except Exception as exc:  # noqa: BLE001 - Redis down: say so in OpenAI's format
        raise ServiceUnavailable("Provider health is unavailable: Redis does not answer.") from exc
    data = [
        {
            "provider": provider,
            "model": model,
            **stats[(provider, model)].to_dict(),
            "circuit": circuits[(provider, model)].to_dict(),
        }
        for provider, model in targets
    ]
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
    )
