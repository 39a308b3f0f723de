"""Image data: URLs are checked at the edge: an image type (or none), base64, some data."""

from __future__ import annotations

import base64

import pytest

from services.api.validation import parse_chat_body
from shared.errors import InvalidRequest

PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()


def _body(url: str) -> bytes:
    import orjson

    part = {"type": "image_url", "image_url": {"url": url}}
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": [part]}]})


@pytest.mark.parametrize(
    "url",
    [
        f"data:image/png;base64,{PNG_B64}",
        f"data:image/jpeg;base64,{PNG_B64}",
        f"data:IMAGE/WEBP;base64,{PNG_B64}",
        f"data:;base64,{PNG_B64}",  # no type: the adapters sniff the bytes
        f"data:image/png;name=cat.png;base64,{PNG_B64}",
        f"data:image/png;base64,{PNG_B64[:10]}\n{PNG_B64[10:]}",  # wrapped base64
        "https://example.com/cat.png",
    ],
)
def test_accepted(url: str) -> None:
    parse_chat_body(_body(url))


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,!!!not-base64!!!",
        "data:image/png;base64,",
        "data:image/png;base64,   ",
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "data:application/pdf;base64,JVBERi0=",
        "data:image/png,raw-bytes-without-base64",
        "data:image/png;base64",
        "data:",
        f"data:image/png;base64,{PNG_B64}<script>",
    ],
)
def test_refused_with_the_param(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_body(_body(url))
    assert caught.value.param == "messages[0].content[0].image_url.url"
    assert caught.value.code == "invalid_image_url"
