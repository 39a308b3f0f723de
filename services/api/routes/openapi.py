"""GET /openapi.json: the OpenAPI 3.1 document of the gateway's public API.

The document is kept as YAML beside the api (`services/api/openapi.yaml`), read and
encoded once per process, and served as JSON without authentication.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"


@functools.cache
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT_PATH.read_text())
    return loaded


@functools.cache
def _encoded() -> bytes:
    return orjson.dumps(document())


async def openapi_json(_request: web.Request) -> web.Response:
    return web.Response(body=_encoded(), content_type="application/json")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/openapi.json", openapi_json)
