"""Validation oracles: what OpenAI's own spec and SDK accept (wire-formats doc §7.1, §7.2).

    validate_openai("CreateChatCompletionResponse", body)      # spec schema, raises if invalid
    validate_openai_request(body, stream=True)                 # SDK request TypedDict

The spec subset is vendored in `tests/fixtures/openai_schemas.json` (schemas reachable from
the chat request/response/chunk, error and model-list schemas), so tests need no network.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
from openai.types.chat import completion_create_params
from pydantic import TypeAdapter

SCHEMAS_PATH = Path(__file__).parent / "fixtures" / "openai_schemas.json"


def allow_null(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 `nullable: true` into JSON Schema 2020-12 null unions."""
    if isinstance(node, list):
        return [allow_null(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: allow_null(v) for k, v in node.items()}
    if node.pop("nullable", False) is True:
        t = node.get("type")
        if isinstance(t, str):
            node["type"] = [t, "null"]
            if "enum" in node and None not in node["enum"]:
                node["enum"] = [*node["enum"], None]
        elif isinstance(t, list):
            node["type"] = t if "null" in t else [*t, "null"]
        else:  # $ref / oneOf / anyOf without a type
            node = {"anyOf": [node, {"type": "null"}]}
    return node


@functools.cache
def _components() -> dict[str, Any]:
    spec = json.loads(SCHEMAS_PATH.read_text())
    components: dict[str, Any] = allow_null(spec["components"])
    return components


@functools.cache
def _validator(schema_name: str) -> jsonschema.Draft202012Validator:
    components = _components()
    if schema_name not in components["schemas"]:
        raise KeyError(f"schema {schema_name!r} is not in the vendored OpenAI subset")
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": components}
    return jsonschema.Draft202012Validator(schema)


def validate_openai(schema_name: str, obj: Any) -> None:
    """Raise `jsonschema.ValidationError` unless `obj` is valid for the named spec schema."""
    validator = _validator(schema_name)
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is not None:
        raise error


@functools.cache
def _request_adapter(stream: bool) -> TypeAdapter[Any]:
    params: Any = (
        completion_create_params.CompletionCreateParamsStreaming
        if stream
        else completion_create_params.CompletionCreateParamsNonStreaming
    )
    return TypeAdapter(params)


def _materialise(value: Any) -> Any:
    """Force pydantic's lazy `Iterable[...]` validators, so nested errors surface."""
    if isinstance(value, dict):
        return {k: _materialise(v) for k, v in value.items()}
    if isinstance(value, (str, bytes, bytearray)):
        return value
    if isinstance(value, (list, tuple)) or hasattr(value, "__iter__"):
        return [_materialise(v) for v in value]
    return value


def validate_openai_request(body: dict[str, Any], *, stream: bool) -> None:
    """Raise unless the official SDK's request type accepts `body` with every top-level key.

    TypedDict validation silently drops unknown keys, so a key the SDK does not know
    (a typo, a gateway-only field, another provider's parameter) is reported here.
    """
    validated = _materialise(_request_adapter(stream).validate_python(body))
    unknown = set(body) - set(validated)
    if unknown:
        raise ValueError(f"keys unknown to the OpenAI request type: {sorted(unknown)}")
