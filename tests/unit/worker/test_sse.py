from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.worker.providers.base import SseEvent
from services.worker.sse import iter_sse


async def _chunks(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _parse(parts: Iterable[bytes]) -> list[SseEvent]:
    return [event async for event in iter_sse(_chunks(parts))]


OPENAI_STREAM = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'


async def test_openai_framing() -> None:
    events = await _parse([OPENAI_STREAM])
    assert events == [
        SseEvent("", b'{"a":1}'),
        SseEvent("", b'{"b":2}'),
        SseEvent("", b"[DONE]"),
    ]


async def test_crlf_line_ends() -> None:
    events = await _parse([OPENAI_STREAM.replace(b"\n", b"\r\n")])
    assert [e.data for e in events] == [b'{"a":1}', b'{"b":2}', b"[DONE]"]


async def test_any_chunking_gives_the_same_events() -> None:
    body = (
        b'event: message_start\r\ndata: {"x":"\xc3\xa9"}\r\n\r\n'
        b": keep-alive\n\n"
        b"event: ping\ndata: {}\n\n"
        b"data: line one\ndata: line two\n\n"
    )
    expected = await _parse([body])
    assert expected == [
        SseEvent("message_start", '{"x":"é"}'.encode()),
        SseEvent("ping", b"{}"),
        SseEvent("", b"line one\nline two"),
    ]
    for size in (1, 2, 3, 7, 16):
        parts = [body[i : i + size] for i in range(0, len(body), size)]
        assert await _parse(parts) == expected, size


async def test_event_name_resets_after_each_event() -> None:
    events = await _parse([b"event: error\ndata: {}\n\ndata: {}\n\n"])
    assert [e.event for e in events] == ["error", ""]


async def test_comments_empty_events_and_unknown_fields_are_skipped() -> None:
    body = b": comment\n\nid: 7\nretry: 100\n\nevent: lonely\n\ndata:x\n\n"
    # `data:x` (no space) is still data; an event with no data is never dispatched.
    assert await _parse([body]) == [SseEvent("", b"x")]


async def test_last_event_without_blank_line_or_newline() -> None:
    assert await _parse([b"data: a\n\ndata: [DONE]"]) == [
        SseEvent("", b"a"),
        SseEvent("", b"[DONE]"),
    ]
    assert await _parse([b"data: a\n"]) == [SseEvent("", b"a")]


async def test_bom_at_start_is_ignored() -> None:
    assert await _parse([b"\xef\xbb\xbfdata: a\n\n"]) == [SseEvent("", b"a")]


async def test_reads_an_aiohttp_stream_with_lines_longer_than_its_buffer() -> None:
    big = b"x" * (512 * 1024)  # far over StreamReader's readline limit (2 x 64 KiB)

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: " + big[:1000])
        await resp.write(big[1000:] + b"\r\n\r\n")
        await resp.write(b"data: [DONE]\r\n\r\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/", handler)
    server = TestServer(app)
    async with (
        server,
        aiohttp.ClientSession() as session,
        session.get(server.make_url("/")) as resp,
    ):
        events = [event async for event in iter_sse(resp.content)]
    assert [len(e.data) for e in events] == [len(big), 6]
    assert events[0].data == big
