"""The wire formats the fake provider speaks: one module per format, one shape each.

A `Wire` reads its requests into a neutral `Ask` and renders a `Plan` as that format's JSON
answer, SSE stream or error body. Timing, drops and hangs are the same for all and live in
`services.fake_provider.serve`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web

from services.fake_provider.behaviour import Ask, Plan


@dataclass(frozen=True, slots=True)
class Stream:
    """One answer as stream bytes: `head`, one blob per content unit, then `tail`.

    A unit is what `drop_after` and `error_event_after` count: a text piece, a piece of
    tool-call arguments, or (Gemini) a whole function call. `error` is the mid-stream error
    event that replaces the rest when a step asks for one.
    """

    headers: Mapping[str, str]
    head: bytes
    units: Sequence[bytes]
    tail: bytes
    error: bytes


class Wire(Protocol):
    name: str  # "openai" | "together" | "anthropic" | "gemini", as recorded on each call

    def credential(self, request: web.Request) -> str:
        """The API key the request carries ("" when none)."""
        ...

    def url_model(self, request: web.Request) -> str | None:
        """The model named in the URL, for wires that put it there."""
        ...

    def parse(self, request: web.Request, body: Any) -> Ask:
        """The request's neutral facts; raises `BadRequest`."""
        ...

    def unauthorized(self) -> web.Response: ...

    def error(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
        model: str = "",
    ) -> web.Response:
        """This wire's error answer for `status` (`code` refines it, as the script asks)."""
        ...

    def answer(self, ask: Ask, plan: Plan) -> web.Response: ...

    def stream(self, ask: Ask, plan: Plan) -> Stream: ...


def json_response(
    data: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def seconds(value: float) -> str:
    """`2` for 2.0, `2.5` for 2.5: how retry hints are written."""
    return str(int(value)) if float(value).is_integer() else str(value)
