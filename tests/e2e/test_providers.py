"""The same OpenAI-SDK script against four providers' wire formats, through the gateway.

The fake provider stands in for OpenAI, Anthropic, Gemini and Together at once; each
body it received is validated against that provider's official SDK request types.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from services.runner import free_port
from tests.e2e.conftest import Stack, http, running_stack
from tests.oracles import validate_openai, validate_openai_request
from tests.oracles_anthropic import validate_anthropic_request
from tests.oracles_gemini import validate_gemini_request

# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
# model -> the wire its fake receives
MODELS = {
    "gpt-4o": "openai",
    "claude-3-5-sonnet": "anthropic",
    "gemini-1.5-pro": "gemini",
    "llama-4-maverick": "together",
}


class _ImageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cat.png"
    server.shutdown()


@pytest.fixture(scope="module")
def providers_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory,
        demo=False,
        env_overrides={
            "API_KEY_OPENAI": "openai-key",
            "BASE_URL_OPENAI": "{fake}/v1",
            "API_KEY_ANTHROPIC": "anthropic-key",
            "BASE_URL_ANTHROPIC": "{fake}/v1",
            "API_KEY_GOOGLE": "google-key",
            "BASE_URL_GOOGLE": "{fake}/v1beta",
            "API_KEY_TOGETHER": "together-key",
            "BASE_URL_TOGETHER": "{fake}/together/v1",
            # The test's image server is on loopback; production keeps this off.
            "MEDIA_ALLOW_PRIVATE_NETWORKS": "true",
        },
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def client(providers_stack: Stack) -> openai.OpenAI:
    _user, key = providers_stack.new_funded_user("20")
    return openai.OpenAI(api_key=key, base_url=providers_stack.api_url + "/v1", max_retries=0, timeout=30)


def received(stack: Stack, wire: str) -> list[dict[str, Any]]:
    _status, calls = http("GET", stack.fake_url + "/_fake/calls")
    return [c for c in calls if c.get("wire") == wire]


def validate_upstream_body(call: dict[str, Any]) -> None:
    body, wire = call["body"], call["wire"]
    if wire == "anthropic":
        validate_anthropic_request(body, stream=bool(body.get("stream")))
    elif wire == "gemini":
        validate_gemini_request(body)
    else:  # OpenAI and Together: OpenAI's request types
        validate_openai_request(body, stream=bool(body.get("stream")))


@pytest.mark.parametrize("model", list(MODELS))
def test_same_script_works_on_every_provider(
    model: str, providers_stack: Stack, client: openai.OpenAI, image_url: str
) -> None:
    http("DELETE", providers_stack.fake_url + "/_fake/calls")
    question = [
        {"type": "text", "text": "What is the weather where this was taken? [[fake:tool=get_weather]]"},
        {"type": "image_url", "image_url": {"url": DATA_URL}},
    ]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": question},
    ]

    # 1. Streaming, with tools and an image: the model calls the tool.
    stream = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    calls: dict[int, dict[str, Any]] = {}
    finish, usage = None, None
    for chunk in stream:
        validate_openai("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                if delta.id:
                    call["id"] = delta.id
                if delta.function and delta.function.name:
                    call["name"] = delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0

    # 2. The tool's result goes back (non-streaming); ids round-trip unchanged.
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": calls[0]["id"],
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": calls[0]["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18C and sunny"},
    ]
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, tools=TOOLS)
    answer = raw.parse()
    assert "18C and sunny" in (answer.choices[0].message.content or "")
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == model

    # 3. An image by http(s) URL, streamed as text.
    stream = client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe it."},
                    {"type": "image_url", "image_url": {"url": image_url}},
                ],
            }
        ],
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("I see 1 image(s).")

    # Every body the provider's fake received is valid for that provider.
    bodies = received(providers_stack, MODELS[model])
    assert len(bodies) == 3
    for call in bodies:
        validate_upstream_body(call)
    if MODELS[model] == "gemini":
        parts = bodies[-1]["body"]["contents"][-1]["parts"]
        assert any("inlineData" in p for p in parts)  # the worker fetched the URL


def test_capability_gating_names_what_is_missing(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="llama-3.1-70b-instruct",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": DATA_URL}}]}],
        )
    assert "vision" in info.value.message
    assert info.value.code == "unsupported_capability"


def test_upstream_400_is_returned_without_trying_another_provider(
    providers_stack: Stack, client: openai.OpenAI
) -> None:
    http("DELETE", providers_stack.fake_url + "/_fake/calls")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="claude-3-5-sonnet", messages=[{"role": "user", "content": "[[fake:status=400]]"}]
        )
    _status, calls = http("GET", providers_stack.fake_url + "/_fake/calls")
    assert len(calls) == 1
