"""Property-based fuzzing (schemathesis + hypothesis) against GET /openapi.json, on a
running stack, authenticated with a funded key.

Positive mode sends bodies that fit the documented schema (with random model names,
so every chat request is refused: 404 model_not_found); negative mode sends bodies that
break it. Either way: never a 5xx, every error in OpenAI's format, every response as
documented, and nothing queued, held or billed. Bounded: about 300 examples in all.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz.conftest import FuzzEnv, count_inputs, snapshot
from tests.oracles import validate_openai

# (method, path, examples) per mode.
BUDGET: dict[GenerationMode, list[tuple[str, str, int]]] = {
    GenerationMode.POSITIVE: [
        ("POST", "/v1/chat/completions", 90),
        ("POST", "/v1/chat/estimate", 40),
        ("GET", "/v1/models", 5),
        ("GET", "/v1/chat/models", 5),
        ("GET", "/v1/chat/health", 5),
        ("GET", "/health", 5),
    ],
    GenerationMode.NEGATIVE: [
        ("POST", "/v1/chat/completions", 110),
        ("POST", "/v1/chat/estimate", 50),
    ],
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", list(BUDGET), ids=lambda m: m.value)
def test_schemathesis_against_openapi_json(fuzz_env: FuzzEnv, mode: GenerationMode) -> None:
    stack = fuzz_env.stack
    document = requests.get(stack.api_url + "/openapi.json", timeout=10).json()
    # Authenticate every case with the funded key (bearer); the X-API-Key alternative
    # would have schemathesis invent keys, refused with 401 before any validation.
    # Bad keys have their own hand-written cases and the flood test.
    document["security"] = [{"bearerKey": []}]
    schema = schemathesis.openapi.from_dict(document)
    auth = {"Authorization": f"Bearer {fuzz_env.key}"}
    before = asyncio.run(snapshot(stack))
    statuses: list[int] = []
    session = requests.Session()
    checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS

    for method, path, examples in BUDGET[mode]:
        operation = schema[path][method]
        is_chat = (method, path) == ("POST", "/v1/chat/completions")

        _run_operation(operation, mode, examples, stack.api_url, session, auth, checks, statuses, is_chat)

    session.close()
    count_inputs([s for s in statuses])
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    print(f"schemathesis {mode.value}: {len(statuses)} requests, statuses {counts}")
    assert len(statuses) >= 100
    assert not [s for s in statuses if s >= 500]
    assert asyncio.run(snapshot(stack)) == before


def _run_operation(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    base_url: str,
    session: requests.Session,
    auth: dict[str, str],
    checks: list[Any],
    statuses: list[int],
    is_chat: bool,
) -> None:
    """`examples` generated cases for one operation; every answer checked."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, headers=auth))
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, headers=auth)
        statuses.append(response.status_code)
        case.validate_response(response, checks=checks, headers=auth)
        if response.status_code >= 400:
            validate_openai("ErrorResponse", response.json())
        if is_chat:
            assert 400 <= response.status_code < 500, (response.status_code, response.text)

    run()
