"""A provider written by a user: a class in a file outside the package, named in the
catalog by dotted path, served through the running gateway."""

from __future__ import annotations

from collections.abc import Iterator
from textwrap import dedent

import openai
import pytest

from tests.e2e.conftest import Stack, http, running_stack

PROVIDER_FILE = '''
from services.worker.providers.custom import BaseProvider


class AcmeProvider(BaseProvider):
    """Acme wants `max_output` instead of `max_tokens` and tags its answers."""

    def transform_request(self, body, target, *, stream):
        body = dict(body)
        if "max_tokens" in body:
            body["max_output"] = body.pop("max_tokens")
        body["user"] = "acme-gateway"
        return body

    def transform_response(self, data):
        for choice in data["choices"]:
            choice["message"]["content"] = "[acme] " + choice["message"]["content"]
        return data

    def transform_stream_event(self, event, data):
        for choice in data.get("choices", []):
            if choice.get("delta", {}).get("content"):
                choice["delta"]["content"] = choice["delta"]["content"].upper()
        return data
'''

CATALOG = """
providers:
  acme: {adapter: acme_provider.AcmeProvider, base_url: "http://unused", key_env: API_KEY_ACME}
models:
  - id: acme-1
    offers:
      - {provider: acme, upstream_model: acme-large, input: "1", output: "1"}
"""


@pytest.fixture(scope="module")
def acme_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("operator_config")
    (folder / "acme_provider.py").write_text(dedent(PROVIDER_FILE))
    (folder / "catalog.yaml").write_text(CATALOG)
    with running_stack(
        tmp_path_factory,
        demo=False,
        env_overrides={
            "CATALOG_PATH": str(folder / "catalog.yaml"),
            "API_KEY_ACME": "acme-key",
            "BASE_URL_ACME": "{fake}/v1",
        },
    ) as stack:
        yield stack


def test_custom_provider_translates_both_ways(acme_stack: Stack) -> None:
    _user, key = acme_stack.new_funded_user("1")
    client = openai.OpenAI(api_key=key, base_url=acme_stack.api_url + "/v1", max_retries=0)
    reply = client.chat.completions.create(
        model="acme-1", messages=[{"role": "user", "content": "hi"}], max_tokens=50
    )
    assert reply.choices[0].message.content.startswith("[acme] Hello")

    stream = client.chat.completions.create(
        model="acme-1", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("HELLO")

    _status, calls = http("GET", acme_stack.fake_url + "/_fake/calls")
    sent = [c["body"] for c in calls if c.get("path", "").endswith("/chat/completions")]
    assert sent[0]["model"] == "acme-large"
    assert sent[0]["max_output"] == 50 and "max_tokens" not in sent[0]
    assert sent[0]["user"] == "acme-gateway"
