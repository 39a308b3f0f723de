"""Server-sent events, parsed from an upstream body as it arrives.

Follows the WHATWG event-stream rules that matter to LLM providers: LF or CRLF line
ends, several `data:` lines joined by LF, an `event:` name, `:` comments, and an event
dispatched at each blank line. `id:` and `retry:` are ignored (we never reconnect).

The body is read in whatever chunks the transport delivers and split with `bytes.split`,
so the per-byte work happens in C; a line may span any number of chunks and has no size
limit (unlike `StreamReader.readline`, which refuses lines over twice the read buffer,
and large tool-call arguments can exceed that).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import aiohttp

from services.worker.providers.base import SseEvent


async def iter_sse(
    content: aiohttp.StreamReader | AsyncIterator[bytes],
) -> AsyncGenerator[SseEvent, None]:
    chunks: AsyncIterator[bytes] = (
        content.iter_any() if isinstance(content, aiohttp.StreamReader) else content
    )
    parser = _EventBuilder()
    # Pieces of a line not yet ended; kept as a list so a huge line costs one join.
    partial: list[bytes] = []
    async for chunk in chunks:
        if b"\n" not in chunk:
            if chunk:
                partial.append(chunk)
            continue
        if partial:
            partial.append(chunk)
            chunk = b"".join(partial)
            partial.clear()
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if tail:
            partial.append(tail)
        for line in lines:
            event = parser.line(line)
            if event is not None:
                yield event
    # A body may end without its final blank line (or even its final LF); deliver what
    # was complete rather than dropping a well-formed last event. A truncated event then
    # fails JSON decoding in the adapter, which is the right outcome for a cut body.
    if partial:
        event = parser.line(b"".join(partial))
        if event is not None:
            yield event
    event = parser.line(b"")
    if event is not None:
        yield event


class _EventBuilder:
    """Accumulates the fields of one event, line by line."""

    __slots__ = ("_data", "_event", "_first")

    def __init__(self) -> None:
        self._event = ""
        self._data: list[bytes] = []
        self._first = True

    def line(self, line: bytes) -> SseEvent | None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._first:
            self._first = False
            line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM may open the stream
        if not line:
            return self._dispatch()
        if line[0] == 0x3A:  # ":" comment, used by some upstreams as a keep-alive
            return None
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        return None

    def _dispatch(self) -> SseEvent | None:
        if not self._data:
            self._event = ""
            return None
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        event = SseEvent(event=self._event, data=data)
        self._event = ""
        self._data = []
        return event
