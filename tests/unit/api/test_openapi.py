"""GET /openapi.json: a valid OpenAPI 3.1 document whose operations the api really serves."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.api.app import create_app
from services.api.routes import openapi
from shared.settings import Settings
from tests.oracles import validate_openai

PUBLIC = {
    ("post", "/v1/chat/completions"),
    ("post", "/v1/chat/estimate"),
    ("get", "/v1/models"),
    ("get", "/v1/chat/models"),
    ("get", "/v1/chat/health"),
    ("get", "/health"),
}


def _operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items() for method in item}


async def test_served_as_json_without_auth() -> None:
    app = web.Application()
    openapi.add_routes(app.router)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/openapi.json")
        assert resp.status == 200
        assert resp.content_type == "application/json"
        served = await resp.json()
    assert served == openapi.document()
    assert served["openapi"] == "3.1.0"
    assert _operations(served) == PUBLIC


def test_every_documented_operation_is_routed_by_the_api() -> None:
    app = create_app(Settings(), redis_url="redis://127.0.0.1:1/0")
    routed = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    assert ("get", "/openapi.json") in routed
    assert _operations(openapi.document()) <= routed


def test_security_schemes_and_error_shape() -> None:
    doc = openapi.document()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerKey"] == {**schemes["bearerKey"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"]["name"] == "X-API-Key"
    assert doc["paths"]["/v1/models"]["get"]["security"] == []
    # The documented error schema accepts what OpenAI's does, and vice versa on a sample.
    sample = {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": None}}
    validate_openai("ErrorResponse", sample)
    jsonschema.validate(sample, doc["components"]["schemas"]["ErrorResponse"])


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 5,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "provider": {"order": ["a"], "allow_fallbacks": False},
        },
    ],
)
def test_request_schema_accepts_valid_bodies(body: dict[str, Any]) -> None:
    doc = openapi.document()
    schema = {"$ref": "#/components/schemas/ChatCompletionRequest", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)
