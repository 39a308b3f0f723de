"""One job, start to finish: route, call with fallback, publish, and describe the outcome.

`execute()` never raises for a provider or client problem: every ending (answer, error,
client gone, deadline) becomes a reply frame for the api and a `CompletionEvent` for
billing. The caller appends the event and acks the job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from services.worker import upstream
from services.worker.cancel import CancelSignal
from services.worker.fallback import RetryPolicy, first_success
from services.worker.media import AddressPolicy, MediaFetcher
from services.worker.providers.base import ChatRequest, ProviderAdapter, Target
from services.worker.outbox import Outbox
from services.worker.publish import ReplyPublisher
from services.worker.routing import ProviderAccess, ProviderPrefs, plan
from shared.capabilities import required_capabilities
from shared.catalog import Catalog
from shared.circuit import Circuits
from shared.provider_stats import TargetStats
from shared.errors import (
    GatewayError,
    GatewayTimeout,
    InvalidRequest,
    ProviderError,
    ServiceUnavailable,
)
from shared.messages import Attempt, CompletionEvent, FrameKind, Job, Outcome, Usage
from shared.redis import keys
from shared.settings import Settings
from shared.money import format_usd_compact
from shared.tokens import count_prompt_tokens, count_text_tokens

if TYPE_CHECKING:
    import aiohttp
    from redis.asyncio import Redis

log = structlog.get_logger("worker.job")

_DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class WorkerDeps:
    settings: Settings
    redis: Redis
    http: aiohttp.ClientSession
    catalog: Catalog
    access: Mapping[str, ProviderAccess]
    timeouts: upstream.Timeouts
    # Adapter instances by the catalog's adapter name (built-in and custom).
    adapters: Mapping[str, ProviderAdapter]
    circuits: Circuits | None = None
    # Sends the Redis commands of all jobs together (None: straight to Redis, in tests).
    outbox: Outbox | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Live statistics snapshot, refreshed in the background by the worker process.
    stats: Mapping[tuple[str, str], TargetStats] = field(default_factory=dict)


@dataclass(slots=True)
class JobState:
    """What happened so far; becomes the completion event."""

    started_ms: int
    attempts: list[Attempt] = field(default_factory=list)
    target: Target | None = None
    usage: Usage | None = None
    generated_chars: int = 0
    # What the model generated (text, tool-call arguments): counted with the model's
    # tokenizer when the provider reports no usage.
    generated: list[str] = field(default_factory=list)
    committed: bool = False  # content reached the client: no more fallback
    first_chunk_ms: int | None = None
    error: GatewayError | None = None
    usage_estimated: bool = False
    attempt_started_ms: int = 0

    def set_usage(self, reported: Usage | None, estimate: Usage) -> Usage:
        """Keep the provider's usage; fall back to an estimate, and remember that."""
        self.usage = reported if reported is not None else estimate
        self.usage_estimated = reported is None
        return self.usage


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def sse(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def execute(
    deps: WorkerDeps, job: Job, *, cancel: CancelSignal, generation: int = 1
) -> CompletionEvent:
    """Run a job to its end. `cancel` is set when the client went away."""
    state = JobState(started_ms=now_ms())
    # A client that went away (cancel message, or nobody subscribed to its reply
    # channel any more) ends the job the same way: through `cancel`.
    publisher = ReplyPublisher(
        deps.outbox or Outbox(deps.redis),
        keys.reply_channel(job.reply_to),
        job.request_id,
        generation,
        gone=cancel,
    )
    remaining_s = (job.deadline_ms - state.started_ms) / 1000
    if remaining_s <= 0:
        state.error = GatewayTimeout("The request expired in the queue before a worker took it.")
        await _publish_error(publisher, state.error)
        return _event(job, state, Outcome.ERROR)

    # The work runs in this task, interrupted by cancelling it when the client goes away
    # or the deadline passes (as `asyncio.timeout` does): no second task per job.
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("execute() must run in a task")
    reason: str | None = None  # "cancel" | "deadline", once the work was interrupted
    finished = False

    def interrupt(why: str) -> None:
        nonlocal reason
        # A job that already has its error is only delivering it. A client that leaves
        # (or an api that gives up on it) while the error frame is being published must
        # not turn the refused request into a billed cancellation.
        if reason is None and not finished and state.error is None:
            reason = why
            task.cancel()

    timer = asyncio.get_running_loop().call_later(remaining_s, interrupt, "deadline")
    cancel.on_set(lambda: interrupt("cancel"))
    crash: Exception | None = None
    try:
        await _serve(deps, job, state, publisher)
    except asyncio.CancelledError:
        if reason is None:
            raise  # cancelled from outside (the worker stopping): not ours to answer
    except Exception as exc:  # noqa: BLE001 - a bug must still end the job cleanly
        crash = exc
    finally:
        finished = True
        timer.cancel()
    if reason is not None and task.uncancel() > 0:
        raise asyncio.CancelledError  # also cancelled from outside meanwhile

    if reason is None:
        if crash is not None:
            log.error("job_crashed", request_id=job.request_id, exc_info=crash)
            state.error = ServiceUnavailable("The worker failed while serving this request.")
            await _safe_publish_error(publisher, state.error)
        outcome = Outcome.ERROR if state.error is not None else Outcome.OK
    elif reason == "cancel":
        await publisher.abandon()
        outcome = Outcome.CANCELLED
        log.info("job_cancelled", request_id=job.request_id, reason="client_gone")
    else:
        # Still sent (after what was generated): an abandoned publisher sends nothing.
        state.error = GatewayTimeout("The request did not finish before its deadline.")
        await _safe_publish_error(publisher, state.error)
        outcome = Outcome.ERROR
    return await _event_counted(job, state, outcome)


async def _event_counted(job: Job, state: JobState, outcome: Outcome) -> CompletionEvent:
    """The event; counting the tokens of a cancelled or broken stream happens in a thread
    (the tokenizer is built on first use, and counting long texts takes a while)."""
    if state.usage is None and state.target is not None and (
        outcome is not Outcome.ERROR or state.committed
    ):
        return await asyncio.to_thread(_event, job, state, outcome)
    return _event(job, state, outcome)


async def _serve(deps: WorkerDeps, job: Job, state: JobState, publisher: ReplyPublisher) -> None:
    try:
        body = orjson.loads(job.body)
    except orjson.JSONDecodeError:
        state.error = ServiceUnavailable("The job body could not be decoded.")
        await _publish_error(publisher, state.error)
        return
    req = ChatRequest(body=body, stream=job.stream, include_usage=job.include_usage)
    prefs = ProviderPrefs.from_dict(body.get("provider")).over(ProviderPrefs.from_dict(job.routing))
    models = [job.model, *(body.get("models") or ())]
    targets = plan(
        models,
        deps.catalog,
        deps.access,
        prefs,
        deps.stats,
        supported_adapters=frozenset(deps.adapters),
        needs=required_capabilities(body),
    )
    if deps.circuits is not None:
        # A recovering provider gets real traffic as its probe: tried first, and the
        # request falls back as usual if the probe fails. Only one request wins the probe.
        due = [t for t in targets if deps.circuits.probe_due(t.name, t.model_id)]
        targets = due + [t for t in targets if t not in due]
    if not targets:
        state.error = ServiceUnavailable(
            f"No provider is configured for model '{job.model}' with what this request needs.",
            code="no_provider",
        )
        await _publish_error(publisher, state.error)
        return

    prepared: dict[str, ChatRequest] = {}  # adapter name -> request after its `prepare`

    async def attempt(target: Target) -> None:
        state.target = target
        state.attempt_started_ms = now_ms()
        call_req = await _prepare(deps, req, target, prepared)
        if req.stream:
            await _stream_once(deps, job, call_req, target, state, publisher)
        else:
            await _complete_once(deps, job, call_req, target, state, publisher)

    try:
        await first_success(
            targets,
            attempt,
            attempts=state.attempts,
            can_fall_back=lambda: not state.committed,
            deadline_ms=job.deadline_ms,
            circuits=deps.circuits,
            retry=deps.retry,
        )
    except (ProviderError, InvalidRequest) as exc:
        state.error = exc
        await _publish_error(publisher, exc)
        return
    if state.first_chunk_ms is not None and state.attempts:
        ttft = state.first_chunk_ms - state.attempt_started_ms
        state.attempts[-1] = replace(state.attempts[-1], ttft_ms=max(ttft, 0))


async def _prepare(
    deps: WorkerDeps, req: ChatRequest, target: Target, done: dict[str, ChatRequest]
) -> ChatRequest:
    """The request after the adapter's optional `prepare` hook (providers/base.py).

    Run once per adapter, not per retry: for Gemini it downloads the image URLs.
    """
    name = target.provider.adapter
    if name not in done:
        prepare = getattr(deps.adapters[name], "prepare", None)
        if prepare is None:
            done[name] = req
        else:
            policy = AddressPolicy(allow_private=deps.settings.media_allow_private_networks)
            done[name] = await prepare(req, MediaFetcher(deps.http, policy), target)
    return done[name]


async def _complete_once(
    deps: WorkerDeps,
    job: Job,
    req: ChatRequest,
    target: Target,
    state: JobState,
    publisher: ReplyPublisher,
) -> None:
    adapter = deps.adapters[target.provider.adapter]
    completion = await upstream.complete(deps.http, adapter, target, req, deps.timeouts)
    reported = completion.usage
    if reported is None:
        reported_or_counted = await asyncio.to_thread(
            _estimated_usage, req, target, completion.choices
        )
    else:
        reported_or_counted = reported
    usage = state.set_usage(reported, reported_or_counted)
    cost = _cost(target, usage)
    body: dict[str, Any] = {
        "id": completion_id(job.request_id),
        "object": "chat.completion",
        "created": job.enqueued_ms // 1000,
        "model": target.model_id,
        "choices": completion.choices,
        "usage": usage_json(usage, cost),
        **completion.extra,
    }
    state.committed = True
    if deps.settings.log_prompts:  # LOG_PROMPTS=true, and only on debug lines
        log.debug("completion_text", completion_text=completion.choices)
    await publisher.finish(FrameKind.RESPONSE, orjson.dumps(body), _meta(target, cost, state))


async def _stream_once(
    deps: WorkerDeps,
    job: Job,
    req: ChatRequest,
    target: Target,
    state: JobState,
    publisher: ReplyPublisher,
) -> None:
    adapter = deps.adapters[target.provider.adapter]
    head: dict[str, Any] = {
        "id": completion_id(job.request_id),
        "object": "chat.completion.chunk",
        "created": job.enqueued_ms // 1000,
        "model": target.model_id,
    }
    # Chunks before the first content (the role chunk) wait here, so a fallback before
    # any content leaves the client with one clean stream.
    held_back: list[bytes] = []
    usage: Usage | None = None
    text_log: list[str] | None = [] if deps.settings.log_prompts else None
    async for delta in upstream.stream(deps.http, adapter, target, req, deps.timeouts):
        if delta.usage is not None:
            usage = delta.usage
        if not delta.choices:
            continue
        chunk = {**head, "choices": delta.choices}
        if req.include_usage:
            chunk["usage"] = None
        data = sse(chunk)
        for choice in delta.choices:
            d = choice.get("delta") or {}
            content = d.get("content")
            if content:
                state.generated_chars += len(content)
                if text_log is not None:
                    text_log.append(content)
                state.generated.append(content)
            for call in d.get("tool_calls") or ():
                arguments = str((call.get("function") or {}).get("arguments") or "")
                state.generated_chars += len(arguments)
                state.generated.append(arguments)
            if content or d.get("tool_calls") or choice.get("finish_reason"):
                state.committed = True
        if not state.committed:
            held_back.append(data)
            continue
        meta = None
        if state.first_chunk_ms is None:
            state.first_chunk_ms = now_ms()
            # The first frame sets the SSE response's headers.
            meta = {"provider": target.name, "attempts": len(state.attempts) + 1}
        if held_back:
            data = b"".join(held_back) + data
            held_back.clear()
        publisher.push(data, meta)

    counted = usage
    if counted is None:
        counted = await asyncio.to_thread(_estimated_usage, req, target, [], state.generated)
    usage = state.set_usage(usage, counted)
    cost = _cost(target, usage)
    if text_log is not None:  # LOG_PROMPTS=true, and only on debug lines
        log.debug("completion_text", completion_text="".join(text_log))
    tail = b"".join(held_back)
    if req.include_usage:
        tail += sse({**head, "choices": [], "usage": usage_json(usage, cost)})
    await publisher.finish(FrameKind.DONE, tail + _DONE, _meta(target, cost, state))


def _meta(target: Target, cost_nusd: int, state: JobState) -> dict[str, Any]:
    return {
        "status": 200,
        "cost_nusd": cost_nusd,
        "provider": target.name,
        "model": target.model_id,
        "attempts": len(state.attempts) + 1,
        "usage_estimated": state.usage_estimated,
        # Figures for the api's request_finished line.
        "prompt_tokens": state.usage.prompt_tokens if state.usage else 0,
        "completion_tokens": state.usage.completion_tokens if state.usage else 0,
        "first_chunk_ms": state.first_chunk_ms,
    }


def _cost(target: Target, usage: Usage) -> int:
    return target.offer.price.cost_nusd(
        usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens
    )


def usage_json(usage: Usage, cost_nusd: int) -> dict[str, Any]:
    """OpenAI's usage object plus `cost` in USD, as OpenRouter sends it: a JSON number
    written from the exact nano-dollars (an orjson Fragment), never a rounded float."""
    body = usage.to_openai()
    body["cost"] = orjson.Fragment(format_usd_compact(cost_nusd).encode())
    return body


def _estimated_usage(
    req: ChatRequest, target: Target, choices: list[dict[str, Any]], generated: Sequence[str] = ()
) -> Usage:
    """Usage counted here when the provider reported none: the prompt, and what was
    generated, with the model's tokenizer (exact for OpenAI-family models, see
    shared/tokens.py). Runs in a thread: counting a long text takes a while."""
    texts = list(generated)
    for choice in choices:
        message = choice.get("message") or {}
        texts.append(str(message.get("content") or ""))
        for call in message.get("tool_calls") or ():
            texts.append(str((call.get("function") or {}).get("arguments") or ""))
    tools = req.body.get("tools")
    prompt = count_prompt_tokens(
        req.body.get("messages") or [],
        target.model_id,
        tools=tools if isinstance(tools, list) else None,
    )
    return Usage(
        prompt_tokens=prompt, completion_tokens=count_text_tokens("".join(texts), target.model_id)
    )


async def _publish_error(publisher: ReplyPublisher, error: GatewayError) -> None:
    await publisher.finish(
        FrameKind.ERROR,
        error.to_body(),
        {"status": error.http_status, "headers": error.headers or None},
    )


async def _safe_publish_error(publisher: ReplyPublisher, error: GatewayError) -> None:
    try:
        await _publish_error(publisher, error)
    except Exception:  # noqa: BLE001 - Redis trouble; the api's deadline ends the request
        log.warning("error_frame_not_sent", exc_info=True)


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def _event(job: Job, state: JobState, outcome: Outcome) -> CompletionEvent:
    finished = now_ms()
    target = state.target
    usage = state.usage
    estimated = state.usage_estimated
    billable = target is not None and (outcome is not Outcome.ERROR or state.committed)
    if usage is None and billable:
        # Cancelled, or broken after content was delivered: bill by estimate what the
        # upstream read and generated.
        assert target is not None
        usage = Usage(
            prompt_tokens=count_prompt_tokens(_messages(job), target.model_id),
            completion_tokens=count_text_tokens("".join(state.generated), target.model_id),
        )
        estimated = True
    usage = usage or Usage()
    cost = _cost(target, usage) if target is not None and billable else 0
    error = state.error
    return CompletionEvent(
        request_id=job.request_id,
        user_id=job.user_id,
        key_id=job.key_id,
        model_requested=job.model,
        model_served=target.model_id if target else None,
        provider=target.name if target else None,
        outcome=outcome,
        stream=job.stream,
        usage=usage,
        usage_estimated=estimated,
        cost_nusd=cost,
        hold_nusd=job.hold_nusd,
        attempts=tuple(state.attempts),
        http_status=error.http_status if error is not None else (499 if outcome is Outcome.CANCELLED else 200),
        error_code=error.code if error is not None else None,
        error_class=error.error_class if isinstance(error, ProviderError) else None,
        queue_wait_ms=max(state.started_ms - job.enqueued_ms, 0),
        ttfc_ms=(state.first_chunk_ms - job.enqueued_ms) if state.first_chunk_ms else None,
        duration_ms=finished - job.enqueued_ms,
        finished_ms=finished,
    )


def _messages(job: Job) -> list[dict[str, Any]]:
    try:
        body = orjson.loads(job.body)
    except orjson.JSONDecodeError:
        return []
    messages = body.get("messages") if isinstance(body, dict) else None
    return messages if isinstance(messages, list) else []
