"""The Gemini adapter's `prepare` hook: turn http(s) image URLs into inline bytes.

Gemini's `fileData` takes only files hosted by Google, so the worker downloads each
image URL a user message carries (through `services/worker/media.py`, which refuses
internal addresses) and rewrites it as a `data:` URL before the request is translated.
Downloads run a few at a time, within a per-request byte budget (Gemini's inline limit).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import Mapping
from typing import Any

from services.worker.media import ImageFetchError
from services.worker.providers.base import ChatRequest, MediaSource

MAX_FETCHED_IMAGES = 16
INLINE_BUDGET_BYTES = 20 << 20
FETCH_CONCURRENCY = 4


def _image_urls(messages: Any) -> list[tuple[int, int, str]]:
    """(message index, part index, url) of every http(s) image in a user message."""
    found = []
    for i, message in enumerate(messages or ()):
        content = message.get("content") if message.get("role") == "user" else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if part.get("type") != "image_url":
                continue
            url = (part.get("image_url") or {}).get("url")
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                found.append((i, j, url))
    return found


async def inline_image_urls(req: ChatRequest, media: MediaSource) -> ChatRequest:
    """`req` with every http(s) image URL replaced by the fetched image as a data: URL."""
    wanted = _image_urls(req.body.get("messages"))
    if not wanted:
        return req
    if len(wanted) > MAX_FETCHED_IMAGES:
        i, j, _ = wanted[MAX_FETCHED_IMAGES]
        raise ImageFetchError(
            f"At most {MAX_FETCHED_IMAGES} image URLs per request can be sent to this model; "
            "send further images as data: URLs.",
            param=_param(i, j),
        )
    gate = asyncio.Semaphore(FETCH_CONCURRENCY)
    remaining = INLINE_BUDGET_BYTES

    async def fetch(i: int, j: int, url: str) -> str:
        nonlocal remaining
        async with gate:
            try:
                if remaining <= 0:
                    raise _over_budget()
                mime, data = await media.fetch_image(url, max_bytes=remaining)
                remaining -= len(data)
                if remaining < 0:
                    raise _over_budget()
            except ImageFetchError as exc:
                exc.param = _param(i, j)
                raise
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"

    tasks = [asyncio.create_task(fetch(i, j, url)) for i, j, url in wanted]
    try:
        data_urls = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise

    messages = list(req.body["messages"])
    for (i, j, _), data_url in zip(wanted, data_urls, strict=True):
        message = dict(messages[i])
        content = list(message["content"])
        part = content[j]
        image = part.get("image_url")
        content[j] = {
            **part,
            "image_url": {**(image if isinstance(image, Mapping) else {}), "url": data_url},
        }
        message["content"] = content
        messages[i] = message
    return dataclasses.replace(req, body={**req.body, "messages": messages})


def _param(i: int, j: int) -> str:
    return f"messages[{i}].content[{j}].image_url.url"


def _over_budget() -> ImageFetchError:
    return ImageFetchError(
        f"The images in this request are too large together (over {INLINE_BUDGET_BYTES} bytes).",
        code="image_too_large",
    )
