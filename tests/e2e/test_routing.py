"""Routing and fallback through real processes: two providers for one model, each a
separate fake provider process that the test scripts to fail, slow down or recover."""

from __future__ import annotations

import signal
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
import redis as sync_redis

from services.runner import free_port, wait_for_port
from tests.e2e.conftest import E2E_REDIS_URL, Stack, http, running_stack

CATALOG = """
providers:
  alpha: {adapter: openai, base_url: "http://unused", key_env: API_KEY_ALPHA}
  beta: {adapter: openai, base_url: "http://unused", key_env: API_KEY_BETA}
models:
  - id: duo
    capabilities: [tools, json, streaming]
    offers:
      - {provider: alpha, upstream_model: duo-alpha, input: "1.00", output: "2.00"}
      - {provider: beta, upstream_model: duo-beta, input: "3.00", output: "4.00"}
  - id: solo
    offers:
      - {provider: beta, upstream_model: solo-beta, input: "3.00", output: "4.00"}
"""


class NtfyFake:
    """An ntfy-compatible topic URL that records what it is sent."""

    def __init__(self) -> None:
        received: list[dict[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                received.append(
                    {
                        "title": self.headers.get("Title", ""),
                        "priority": self.headers.get("Priority", ""),
                        "tags": self.headers.get("Tags", ""),
                        "message": body,
                    }
                )
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_args: Any) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/gateway-alerts"


class Fakes:
    def __init__(self, alpha_url: str, beta_url: str) -> None:
        self.urls = {"alpha": alpha_url, "beta": beta_url}

    def script(self, provider: str, steps: list[dict[str, Any]]) -> None:
        status, _ = http("POST", self.urls[provider] + "/_fake/script", orjson.dumps(steps))
        assert status < 300

    def calls(self, provider: str) -> list[dict[str, Any]]:
        _status, calls = http("GET", self.urls[provider] + "/_fake/calls")
        return [c for c in calls if c.get("path", "").endswith("/chat/completions")]

    def reset(self) -> None:
        for url in self.urls.values():
            http("DELETE", url + "/_fake/script")
            http("DELETE", url + "/_fake/calls")


@pytest.fixture(scope="module")
def ntfy() -> Iterator[NtfyFake]:
    fake = NtfyFake()
    yield fake
    fake.server.shutdown()


@pytest.fixture(scope="module")
def routed(
    tmp_path_factory: pytest.TempPathFactory, ntfy: NtfyFake
) -> Iterator[tuple[Stack, Fakes]]:
    catalog = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    catalog.write_text(CATALOG)
    beta_port = free_port()
    beta = __import__("subprocess").Popen(
        [sys.executable, "-m", "services.fake_provider", "--port", str(beta_port)]
    )
    try:
        assert wait_for_port(beta_port, 15)
        with running_stack(
            tmp_path_factory,
            demo=False,
            env_overrides={
                "CATALOG_PATH": str(catalog),
                "API_KEY_ALPHA": "alpha-key",
                "API_KEY_BETA": "beta-key",
                "BASE_URL_ALPHA": "{fake}/v1",
                "BASE_URL_BETA": f"http://127.0.0.1:{beta_port}/v1",
                "PROVIDER_MAX_RETRIES": "0",
                "CIRCUIT_FAILURE_THRESHOLD": "3",
                "CIRCUIT_COOLDOWN_SECONDS": "2",
                "ADMIN_TOKEN": "admin-secret-for-tests",
                "NTFY_ERROR_URL": ntfy.url,
            },
        ) as stack:
            yield stack, Fakes(stack.fake_url, f"http://127.0.0.1:{beta_port}")
    finally:
        beta.send_signal(signal.SIGTERM)
        beta.wait(timeout=10)


@pytest.fixture
def env(routed: tuple[Stack, Fakes]) -> Iterator[tuple[Stack, Fakes, openai.OpenAI]]:
    stack, fakes = routed
    fakes.reset()
    redis = sync_redis.Redis.from_url(E2E_REDIS_URL)
    for pattern in ("gw:circuit:*", "gw:probe:*", "gw:pstats:*"):
        for key in redis.scan_iter(pattern):
            redis.delete(key)
    redis.close()
    time.sleep(1.2)  # workers refresh their health snapshot every second
    _user, key = stack.new_funded_user("5")
    client = openai.OpenAI(api_key=key, base_url=stack.api_url + "/v1", max_retries=0, timeout=30)
    yield stack, fakes, client


def ask(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=extra.pop("model", "duo"), messages=[{"role": "user", "content": "hi"}], **extra
    )


def chat_health(stack: Stack) -> dict[tuple[str, str], dict[str, Any]]:
    _status, body = http("GET", stack.api_url + "/v1/chat/health")
    return {(row["provider"], row["model"]): row for row in body["data"]}


class TestFallback:
    def test_failing_provider_falls_back_then_circuit_opens_and_heals(
        self, env: Any, ntfy: NtfyFake
    ) -> None:
        stack, fakes, client = env
        fakes.script("alpha", [{"status": 500}] * 50)
        # Ask for alpha first: the default policy would demote it after two failures
        # on its own, before its circuit could open.
        alpha_first = {"provider": {"order": ["alpha"]}}
        providers, attempts = [], []
        for _ in range(6):
            raw = ask(client, extra_body=alpha_first)
            assert raw.parse().choices[0].message.content
            providers.append(raw.headers["x-gateway-provider"])
            attempts.append(int(raw.headers["x-gateway-attempts"]))
            time.sleep(0.2)
        assert providers == ["beta"] * 6
        assert attempts[:3] == [2, 2, 2]  # alpha tried and failed, beta answered
        time.sleep(1.2)
        assert attempts[3:] == [1, 1, 1]  # alpha skipped while its circuit is open
        assert chat_health(stack)[("alpha", "duo")]["circuit"]["state"] == "open"
        assert len(fakes.calls("alpha")) == 3  # skipped while open

        # Alerts: one for alpha's errors (not one per failed request), one high-priority
        # alert for the circuit that opened; delivered by billing's arq worker.
        def alerts_arrived() -> bool:
            return len(ntfy.received) >= 2

        stack.wait_until(alerts_arrived, 15, "two alerts at the ntfy fake")
        time.sleep(1.0)  # anything more would be a duplicate
        titles = sorted(a["title"] for a in ntfy.received)
        assert len(titles) == 2, titles
        failing = next(a for a in ntfy.received if a["title"].startswith("Provider alpha failing"))
        assert "provider=alpha model=duo error_class=technical status=500" in failing["message"]
        assert "request_id=" in failing["message"]
        opened = next(a for a in ntfy.received if a["title"].startswith("Circuit opened"))
        assert opened["priority"] == "5"

        fakes.reset()  # alpha recovers
        time.sleep(2.5)  # cooldown passes: one probe goes to alpha
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if ask(client, extra_body=alpha_first).headers["x-gateway-provider"] == "alpha":
                break
            time.sleep(0.3)
        health = chat_health(stack)[("alpha", "duo")]
        assert health["circuit"]["state"] == "closed"
        assert health["samples"] >= 4 and health["success_rate"] < 1

    def test_business_error_is_returned_and_second_provider_never_called(
        self, env: Any, ntfy: NtfyFake
    ) -> None:
        _stack, fakes, client = env
        fakes.script("alpha", [{"status": 400}])
        with pytest.raises(openai.BadRequestError):
            ask(client)
        assert fakes.calls("beta") == []
        assert len(fakes.calls("alpha")) == 1
        time.sleep(0.5)
        assert not [a for a in ntfy.received if "status=400" in a["message"]]  # no alert

    def test_stream_falls_back_before_first_chunk_not_after(self, env: Any) -> None:
        _stack, fakes, client = env
        fakes.script("alpha", [{"status": 503}])
        stream = client.chat.completions.create(
            model="duo", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text.startswith("Hello")
        assert len(fakes.calls("beta")) == 1

        fakes.reset()
        fakes.script("alpha", [{"drop_after": 2}])
        stream = client.chat.completions.create(
            model="duo", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(openai.APIError):
            for _chunk in stream:
                pass
        assert fakes.calls("beta") == []  # content had reached the client: no fallback

        # On the wire: content, then one last chunk that says how the stream ended.
        fakes.script("alpha", [{"drop_after": 2}])
        request = urllib.request.Request(
            _stack.api_url + "/v1/chat/completions",
            data=orjson.dumps(
                {"model": "duo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            ),
            headers={"Authorization": f"Bearer {client.api_key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - local
            events = [line[6:] for line in resp.read().split(b"\n") if line.startswith(b"data: ")]
        assert b"[DONE]" not in events
        last = orjson.loads(events[-1])
        assert last["choices"][0]["finish_reason"] == "error"
        assert last["error"]["code"] and last["error"]["message"]
        assert any(orjson.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1])


class TestPreferences:
    def test_order_only_ignore_allow_fallbacks(self, env: Any) -> None:
        _stack, fakes, client = env
        raw = ask(client, extra_body={"provider": {"order": ["beta"]}})
        assert raw.headers["x-gateway-provider"] == "beta"
        raw = ask(client, extra_body={"provider": {"ignore": ["alpha"]}})
        assert raw.headers["x-gateway-provider"] == "beta"
        raw = ask(client)  # default policy: alpha is cheaper
        assert raw.headers["x-gateway-provider"] == "alpha"

        fakes.script("alpha", [{"status": 500}] * 2)
        with pytest.raises(openai.APIStatusError) as info:
            ask(client, extra_body={"provider": {"only": ["alpha"]}})
        assert info.value.status_code == 502
        with pytest.raises(openai.APIStatusError):
            ask(client, extra_body={"provider": {"order": ["alpha"], "allow_fallbacks": False}})
        assert len(fakes.calls("beta")) == 2  # only the two successful asks above

    def test_models_fallback_says_which_model_answered(self, env: Any) -> None:
        _stack, fakes, client = env
        fakes.script("alpha", [{"status": 500}])
        fakes.script("beta", [{"status": 500, "model": "duo-beta"}])
        raw = ask(client, extra_body={"models": ["solo"]})
        assert raw.parse().model == "solo"
        assert raw.headers["x-gateway-attempts"] == "3"
        assert [c["body"]["model"] for c in fakes.calls("beta")] == ["duo-beta", "solo-beta"]

    def test_sort_latency_demotes_a_slow_provider(self, env: Any) -> None:
        _stack, fakes, client = env
        fakes.script("alpha", [{"ttft_ms": 400}] * 20)
        served = []
        for _ in range(6):
            served.append(ask(client, extra_body={"provider": {"sort": "latency"}}).headers["x-gateway-provider"])
            time.sleep(1.1)  # let workers refresh statistics
        assert served[-2:] == ["beta", "beta"]
        assert "alpha" in served or len(fakes.calls("alpha")) == 0

    def test_stored_user_preferences_apply_and_requests_override_them(self, env: Any) -> None:
        stack, _fakes, _client = env
        user_id, key = stack.new_funded_user("1")
        client = openai.OpenAI(api_key=key, base_url=stack.api_url + "/v1", max_retries=0)
        assert ask(client).headers["x-gateway-provider"] == "alpha"  # default: cheaper

        out = stack.cli("prefs", "set", "--user", user_id, "--order", "beta")
        assert orjson.loads(out)["provider"] == {"order": ["beta"]}
        admin = {"Authorization": "Bearer admin-secret-for-tests"}
        # The admin API sets the same thing, and drops this process's cached copy at once.
        status, body = http(
            "PUT", f"{stack.api_url}/admin/users/{user_id}/preferences",
            orjson.dumps({"order": ["beta"], "sort": "price"}), admin,
        )  # fmt: skip
        assert status == 200 and body["provider"]["order"] == ["beta"]
        assert ask(client).headers["x-gateway-provider"] == "beta"
        raw = ask(client, extra_body={"provider": {"order": ["alpha"]}})
        assert raw.headers["x-gateway-provider"] == "alpha"  # the request wins

        status, error = http(
            "PUT", f"{stack.api_url}/admin/users/{user_id}/preferences",
            orjson.dumps({"sort": "fastest"}), admin,
        )  # fmt: skip
        assert status == 400 and error["error"]["param"] == "provider.sort"
        status, _ = http("GET", f"{stack.api_url}/admin/users/{user_id}/preferences")
        assert status == 401
        status, _ = http("GET", f"{stack.api_url}/admin/users/usr_nobody/preferences", None, admin)
        assert status == 404
        status, body = http("DELETE", f"{stack.api_url}/admin/users/{user_id}/preferences", None, admin)
        assert status == 200 and body["provider"] == {}
        assert ask(client).headers["x-gateway-provider"] == "alpha"

    def test_invalid_provider_object_is_400(self, env: Any) -> None:
        _stack, _fakes, client = env
        with pytest.raises(openai.BadRequestError) as info:
            ask(client, extra_body={"provider": {"sort": "random"}})
        assert info.value.body["param"] == "provider.sort"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            ask(client, extra_body={"models": ["nope"]})


def test_chat_models_lists_providers_prices_capabilities(routed: tuple[Stack, Fakes]) -> None:
    stack, _fakes = routed
    _status, body = http("GET", stack.api_url + "/v1/chat/models")
    duo = next(m for m in body["data"] if m["id"] == "duo")
    assert [p["provider"] for p in duo["providers"]] == ["alpha", "beta"]
    assert duo["providers"][0]["pricing_usd_per_million_tokens"]["input"] == "1.00"
    assert "tools" in duo["capabilities"]
