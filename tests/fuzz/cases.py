"""Hand-written hostile inputs for `POST /v1/chat/completions` (and the estimate route).

Each case is a request a client could send that must be refused with a 4xx in OpenAI's
error format, before anything is queued, held or billed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

MODEL = "gpt-4o-mini"
HI = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    path: str = "/v1/chat/completions"
    headers: dict[str, str] = field(default_factory=dict)
    auth: bool = True
    status: int | None = None  # the exact status expected, when it matters


def _json(name: str, body: Any, **kw: Any) -> Case:
    return Case(name, orjson.dumps(body), **kw)


def _chat(name: str, **fields: Any) -> Case:
    """A valid chat body with `fields` laid over it (Case options pass through)."""
    options = {k: fields.pop(k) for k in ("path", "auth", "headers", "status") if k in fields}
    body = {"model": MODEL, "messages": HI, **fields}
    return _json(name, {k: v for k, v in body.items() if v is not _DROP}, **options)


_DROP = object()
DEEP = 10_000


def _deep_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _deep_objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def cases(max_body_bytes: int) -> list[Case]:
    big_text = "x" * (max_body_bytes + 1024)
    return [
        # malformed JSON
        Case("empty body", b""),
        Case("whitespace body", b"   \n"),
        Case("truncated object", b'{"model": "gpt-4o-mini", "messages": ['),
        Case("single quotes", b"{'model': 'gpt-4o-mini'}"),
        Case("trailing garbage", orjson.dumps({"model": MODEL, "messages": HI}) + b"}"),
        Case("json null", b"null"),
        Case("json array", b"[]"),
        Case("json string", b'"hello"'),
        Case("json number", b"42"),
        Case("NaN literal", b'{"model": "gpt-4o-mini", "messages": [], "temperature": NaN}'),
        Case("infinite number", b'{"model": "gpt-4o-mini", "messages": [], "temperature": 1e400}'),
        Case("invalid utf-8", b'{"model": "\xff\xfe", "messages": []}'),
        Case("utf-8 BOM", b"\xef\xbb\xbf" + orjson.dumps({"model": MODEL, "messages": HI})),
        Case("lone surrogate escape", b'{"model": "\\ud800", "messages": []}'),
        # deep nesting (orjson stops at 1024 levels: a 400, never a RecursionError)
        Case("10k nested arrays", _deep_arrays(DEEP)),
        Case("10k nested objects", _deep_objects(DEEP)),
        Case(
            "10k nested arrays in content",
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": '
            + _deep_arrays(DEEP)
            + b"}]}",
        ),
        Case(
            "10k nested objects in metadata",
            b'{"model": "gpt-4o-mini", "messages": [], "metadata": ' + _deep_objects(DEEP) + b"}",
        ),
        Case(
            "900 nested arrays as content (parses)",
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": '
            + b"[" * 900 + b'"x"' + b"]" * 900
            + b"}]}",
        ),
        # wrong types
        _json("model is a number", {"model": 123, "messages": HI}),
        _json("model missing", {"messages": HI}),
        _json("model empty", {"model": " ", "messages": HI}),
        _chat("messages is a string", messages="hi"),
        _chat("messages empty", messages=[]),
        _chat("message is a number", messages=[1]),
        _chat("role is a number", messages=[{"role": 5, "content": "hi"}]),
        _chat("unknown role", messages=[{"role": "root", "content": "hi"}]),
        _chat("content is a number", messages=[{"role": "user", "content": 5}]),
        _chat("content missing", messages=[{"role": "user"}]),
        _chat("empty content parts", messages=[{"role": "user", "content": []}]),
        _chat("part without type", messages=[{"role": "user", "content": [{"text": "hi"}]}]),
        _chat("tool message without id", messages=[{"role": "tool", "content": "42"}]),
        _chat(
            "malformed tool_calls",
            messages=[{"role": "assistant", "content": None, "tool_calls": [{"id": 1}]}],
        ),
        _chat("stream is a string", stream="yes"),
        _chat("stream_options without stream", stream_options={"include_usage": True}),
        _chat("temperature is a string", temperature="hot"),
        _chat("n is a float", n=1.5),
        _chat("stop is a number", stop=5),
        _chat("five stop strings", stop=["a", "b", "c", "d", "e"]),
        _chat("metadata is a list", metadata=["a"]),
        _chat("provider is a string", provider="openai"),
        _chat("provider unknown key", provider={"fastest": True}),
        _chat("models has a number", models=[1]),
        # numbers out of range
        _chat("negative max_tokens", max_tokens=-1),
        _chat("zero max_tokens", max_tokens=0),
        _chat("huge max_tokens", max_tokens=10**12),
        Case(
            "max_tokens beyond int64",
            b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": 1180591620717411303424}',
        ),
        _chat("negative max_completion_tokens", max_completion_tokens=-5),
        _chat("bool max_tokens", max_tokens=True),
        _chat("n zero", n=0),
        _chat("n huge", n=10**6),
        _chat("temperature 3", temperature=3),
        _chat("top_p negative", top_p=-0.1),
        Case(
            "seed beyond int64",
            b'{"model": "gpt-4o-mini", "messages": [], "seed": 18446744073709551616}',
        ),
        _chat("top_logprobs 100", top_logprobs=100),
        # unknown fields
        _chat("unknown field", foo=1),
        _chat("prototype pollution key", __proto__={"admin": True}),
        _chat("gateway-internal looking field", user_id="usr_someone_else"),
        # images: bad data and URLs (refused at the edge before anything is queued)
        _chat("image url ftp", messages=[_image("ftp://127.0.0.1/x.png")]),
        _chat("image url file", messages=[_image("file:///etc/passwd")]),
        _chat("image url javascript", messages=[_image("javascript:alert(1)")]),
        _chat("image url gopher", messages=[_image("gopher://127.0.0.1:6379/_PING")]),
        _chat("image url number", messages=[_image(123)]),
        _chat(
            "image_url not an object",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}],
        ),
        # invalid tool schemas
        _chat("tools is an object", tools={"type": "function"}),
        _chat("tool without function", tools=[{"type": "function"}]),
        _chat("tool of unknown type", tools=[{"type": "code_interpreter"}]),
        _chat("tool name with spaces", tools=[_tool("bad name")]),
        _chat("tool name 65 chars", tools=[_tool("a" * 65)]),
        _chat("tool name with RTL mark", tools=[_tool("get\u202eweather")]),
        _chat("tool parameters a string", tools=[_tool("f", parameters="object")]),
        _chat("tool parameters a list", tools=[_tool("f", parameters=[])]),
        _chat("tool_choice unknown", tools=[_tool("f")], tool_choice="maybe"),
        _chat("tool_choice required without tools", tool_choice="required"),
        _chat("response_format unknown", response_format={"type": "yaml"}),
        _chat("json_schema without name", response_format={"type": "json_schema", "json_schema": {}}),
        # odd unicode where it must not match anything
        _json("NUL in model", {"model": "gpt-4o-mini\u0000", "messages": HI}),
        _json("RTL mark in model", {"model": "\u202egpt-4o-mini", "messages": HI}),
        _json("zero-width joiner model", {"model": "gpt\u200d-4o-mini", "messages": HI}),
        _json("NUL in role", {"model": MODEL, "messages": [{"role": "user\u0000", "content": "hi"}]}),
        _json("emoji model", {"model": "\U0001f600" * 1000, "messages": HI}),
        _json("unknown model", {"model": "no-such-model", "messages": HI}),
        _json("unknown fallback model", {"model": MODEL, "messages": HI, "models": ["nope"]}),
        # size
        _chat("100,001 messages", messages=[{"role": "user", "content": ""}] * 100_001),
        Case("body over the limit", orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": big_text}]}), status=413),
        # auth
        _chat("no credentials", auth=False),
        Case("bad API key", orjson.dumps({"model": MODEL, "messages": HI}), auth=False,
             headers={"Authorization": "Bearer gw-not-a-real-key-000000000000000000"}),
        Case("empty bearer", orjson.dumps({"model": MODEL, "messages": HI}), auth=False,
             headers={"Authorization": "Bearer "}),
        Case("basic auth", orjson.dumps({"model": MODEL, "messages": HI}), auth=False,
             headers={"Authorization": "Basic dXNlcjpwYXNz"}),
        Case("unicode API key", orjson.dumps({"model": MODEL, "messages": HI}), auth=False,
             headers={"X-API-Key": "gw-\u00e9\u00e8"}),
        # the estimate route takes the same body and must refuse it the same way
        Case("estimate: malformed", b"{", path="/v1/chat/estimate"),
        Case("estimate: deep nesting", _deep_arrays(DEEP), path="/v1/chat/estimate"),
        _chat("estimate: negative max_tokens", max_tokens=-1, path="/v1/chat/estimate"),
        _chat("estimate: unknown field", foo=1, path="/v1/chat/estimate"),
        _json("estimate: unknown model", {"model": "nope", "messages": HI}, path="/v1/chat/estimate"),
        # wrong routes and methods
        Case("unknown path", b"{}", path="/v1/chat/completion"),
        Case("dot-dot path", b"{}", path="/v1/../admin/users"),
        Case("models id path traversal", b"", path="/v1/models/..%2F..%2Fetc%2Fpasswd"),
    ]  # fmt: skip


def _image(url: Any) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}


def _tool(name: str, parameters: Any = _DROP) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not _DROP:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


# Raw HTTP requests the client libraries refuse to send: header injection, smuggling.
def raw_cases(port: int, key: str) -> list[tuple[str, bytes]]:
    body = orjson.dumps({"model": MODEL, "messages": HI})
    host = f"Host: 127.0.0.1:{port}\r\n".encode()

    def request(headers: bytes, payload: bytes = body, length: bool = True) -> bytes:
        head = b"POST /v1/chat/completions HTTP/1.1\r\n" + host + headers
        if length:
            head += f"Content-Length: {len(payload)}\r\n".encode()
        return head + b"Content-Type: application/json\r\nConnection: close\r\n\r\n" + payload

    auth = f"Authorization: Bearer {key}\r\n".encode()
    return [
        ("CRLF-injected header after a bad key",
         request(b"X-API-Key: gw-bad\r\nX-Injected: 1\r\nAuthorization: Bearer gw-bad\r\n")),
        ("bare CR inside a header value", request(auth + b"X-Note: a\rb\r\n")),
        ("NUL inside a header value", request(auth + b"X-Note: a\x00b\r\n")),
        ("LF-only line ending in a header", request(auth + b"X-Note: a\nX-Other: b\r\n")),
        ("header name with a space", request(auth + b"X Note: a\r\n")),
        ("20 kB header", request(auth + b"X-Big: " + b"a" * 20_000 + b"\r\n")),
        ("non-latin-1 bytes in the key", request("X-API-Key: gw-\u2603\r\n".encode())),
        ("content-length and chunked (smuggling)",
         request(auth + b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n")),
        ("negative content-length", request(auth + b"Content-Length: -1\r\n", length=False)),
        ("two different content-lengths",
         request(auth + b"Content-Length: 1\r\n", body, length=True)),
    ]  # fmt: skip
