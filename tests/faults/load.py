"""A bounded load loop with the official `openai` SDK that records what each client saw.

Mixed streaming and non-streaming requests, some of them slow streams (the fake
provider's `[[fake:chunks=20,chunk_delay_ms=30]]` directive), at a fixed concurrency,
until a request budget, a time budget or a stop event ends it. Every request ends as one
`Seen`: a success (with its `x-request-id`) or an error (HTTP status, OpenAI error body
or the connection failure), so the audit can hold the ledger against it.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai

SLOW_STREAM = "[[fake:chunks=20,chunk_delay_ms=30]]"
# In every default prompt: the log scan fails if it shows up in any service's log line.
PROMPT_CANARY = "prompt-canary-q7x"
FULL_REPLY = "Hello from the gateway's demo provider. Your request made it through the queue, a worker and back."


@dataclass(slots=True)
class Seen:
    """What one client saw."""

    index: int
    stream: bool
    prompt: str
    ok: bool = False
    request_id: str | None = None
    status: int | None = None  # HTTP status of the response (200 for an SSE that began)
    error_kind: str | None = None  # status | stream | connection | timeout | incomplete
    error: dict[str, Any] | None = None  # the OpenAI error object, when there was one
    text: str = ""
    finish_reason: str | None = None
    cost_header: str | None = None
    provider: str | None = None  # x-gateway-provider
    attempts: int = 0  # x-gateway-attempts: more than 1 means a fallback or retry
    started_s: float = 0.0
    ended_s: float = 0.0

    @property
    def seconds(self) -> float:
        return self.ended_s - self.started_s


@dataclass(slots=True)
class Mix:
    """How requests are drawn. `prompt` may add fake directives to a request."""

    model: str = "gpt-4o-mini"
    stream_fraction: float = 0.5
    slow_fraction: float = 0.3
    max_tokens: int | None = 64
    prompt: Callable[[random.Random, int], str] | None = None
    extra_body: dict[str, Any] | None = None


@dataclass(slots=True)
class LoadReport:
    seen: list[Seen] = field(default_factory=list)

    @property
    def ok(self) -> list[Seen]:
        return [s for s in self.seen if s.ok]

    @property
    def errors(self) -> list[Seen]:
        return [s for s in self.seen if not s.ok]

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.seen:
            label = "ok" if s.ok else f"{s.error_kind}:{s.status}"
            counts[label] = counts.get(label, 0) + 1
        return counts

    def five_xx(self) -> list[Seen]:
        """Errors answered with a 5xx HTTP status (before any stream began)."""
        return [s for s in self.seen if not s.ok and s.status is not None and s.status >= 500]


def client(base_url: str, key: str, timeout_s: float = 40.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=key, base_url=base_url + "/v1", max_retries=0, timeout=timeout_s
    )


async def one_request(api: openai.AsyncOpenAI, seen: Seen, mix: Mix) -> Seen:
    """Send one chat request and fill in `seen` with what came back."""
    seen.started_s = time.monotonic()
    kwargs: dict[str, Any] = {
        "model": mix.model,
        "messages": [{"role": "user", "content": seen.prompt}],
    }
    if mix.max_tokens is not None:
        kwargs["max_tokens"] = mix.max_tokens
    if mix.extra_body:
        kwargs["extra_body"] = mix.extra_body
    try:
        if seen.stream:
            raw = await api.chat.completions.with_raw_response.create(
                stream=True, stream_options={"include_usage": True}, **kwargs
            )
            _answer_headers(seen, raw.headers)
            async for chunk in await _parsed(raw):
                for choice in chunk.choices:
                    if choice.delta.content:
                        seen.text += choice.delta.content
                    if choice.finish_reason:
                        seen.finish_reason = choice.finish_reason
            if seen.finish_reason is None:
                seen.error_kind = "incomplete"  # the stream ended without finishing
            else:
                seen.ok = True
        else:
            raw = await api.chat.completions.with_raw_response.create(**kwargs)
            _answer_headers(seen, raw.headers)
            seen.cost_header = raw.headers.get("x-gateway-cost")
            completion = await _parsed(raw)
            seen.text = completion.choices[0].message.content or ""
            seen.finish_reason = completion.choices[0].finish_reason
            seen.ok = True
    except openai.APIStatusError as exc:
        seen.status = exc.status_code
        seen.request_id = exc.response.headers.get("x-request-id")
        seen.error_kind = "status"
        seen.error = _error_object(exc.body)
    except openai.APITimeoutError:
        seen.error_kind = "timeout"
    except openai.APIConnectionError as exc:
        seen.error_kind = "connection"
        seen.error = {"message": str(exc.__cause__ or exc)[:200]}
    except openai.APIError as exc:  # an error event inside a stream that had begun
        seen.error_kind = "stream"
        seen.error = _error_object(exc.body)
    except OSError as exc:  # the connection broke mid-stream, below the SDK
        seen.error_kind = "connection"
        seen.error = {"message": f"{type(exc).__name__}: {exc}"[:200]}
    seen.ended_s = time.monotonic()
    return seen


def _answer_headers(seen: Seen, headers: Any) -> None:
    seen.status = 200
    seen.request_id = headers.get("x-request-id")
    seen.provider = headers.get("x-gateway-provider")
    seen.attempts = int(headers.get("x-gateway-attempts") or 0)


async def _parsed(raw: Any) -> Any:
    """`raw.parse()`: a coroutine for a completion, the stream itself in some SDK versions."""
    parsed = raw.parse()
    return await parsed if inspect.isawaitable(parsed) else parsed


def _error_object(body: object) -> dict[str, Any] | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        return inner if isinstance(inner, dict) else {"message": str(inner)}
    return None if body is None else {"message": str(body)}


def default_prompt(rng: random.Random, index: int, slow_fraction: float) -> str:
    text = f"load request {index} {PROMPT_CANARY}"
    if rng.random() < slow_fraction:
        text += " " + SLOW_STREAM
    return text


async def run_load(
    base_url: str,
    keys: Sequence[str],
    *,
    max_requests: int,
    concurrency: int = 8,
    duration_s: float | None = None,
    stop: asyncio.Event | None = None,
    mix: Mix | None = None,
    seed: int = 7,
    report: LoadReport | None = None,
    pace_s: float = 0.0,
) -> LoadReport:
    """Send up to `max_requests` requests, `concurrency` at a time, until the budget, the
    time limit or `stop` ends the loop; requests already sent run to their end. Each lane
    pauses `pace_s` after each request, so fast failures cannot spin."""
    mix = mix or Mix()
    rng = random.Random(seed)
    report = report if report is not None else LoadReport()
    clients = [client(base_url, key) for key in keys]
    deadline = time.monotonic() + duration_s if duration_s is not None else None
    counter = iter(range(max_requests))

    def next_index() -> int | None:
        if stop is not None and stop.is_set():
            return None
        if deadline is not None and time.monotonic() >= deadline:
            return None
        return next(counter, None)

    async def lane(lane_no: int) -> None:
        api = clients[lane_no % len(clients)]
        while (index := next_index()) is not None:
            if mix.prompt is not None:
                prompt = mix.prompt(rng, index)
            else:
                prompt = default_prompt(rng, index, mix.slow_fraction)
            seen = Seen(index=index, stream=rng.random() < mix.stream_fraction, prompt=prompt)
            report.seen.append(seen)
            await one_request(api, seen, mix)
            if pace_s:
                await asyncio.sleep(pace_s)

    try:
        await asyncio.gather(*(lane(i) for i in range(concurrency)))
    finally:
        for api in clients:
            await api.close()
    return report
