from __future__ import annotations

import pytest

from shared.messages import (
    Attempt,
    CompletionEvent,
    FrameKind,
    Job,
    MessageError,
    Outcome,
    ReplyFrame,
    Usage,
)


def test_job_round_trip_keeps_raw_body() -> None:
    job = Job(
        request_id="r1", user_id="u1", key_id="k1", reply_to="p1", model="m", stream=True,
        include_usage=False, deadline_ms=2, enqueued_ms=1, hold_nusd=5, body=b'{"x": 1}',
    )  # fmt: skip
    fields = {k.encode(): v for k, v in job.to_fields().items()}
    assert Job.from_fields(fields) == job


def test_reply_frame_round_trip_with_binary_payload() -> None:
    frame = ReplyFrame("r1", 3, FrameKind.DONE, b"data: {}\n\ndata: [DONE]\n\n", {"cost_nusd": 7}, 2)
    assert ReplyFrame.decode(frame.encode()) == frame


def test_completion_event_round_trip() -> None:
    event = CompletionEvent(
        request_id="r", user_id="u", key_id=None, model_requested="m", model_served="m",
        provider="openai", outcome=Outcome.OK, stream=False, usage=Usage(10, 5, 2, 1),
        usage_estimated=False, cost_nusd=123, hold_nusd=456,
        attempts=(Attempt("openai", "m", "ok", 200),),
    )  # fmt: skip
    assert CompletionEvent.decode(event.encode()) == event


@pytest.mark.parametrize("raw", [b"", b"{}", b'{"v": 99}', b"nope"])
def test_bad_event_raises_message_error(raw: bytes) -> None:
    with pytest.raises(MessageError):
        CompletionEvent.decode(raw)


def test_frame_without_header_line() -> None:
    with pytest.raises(MessageError):
        ReplyFrame.decode(b'{"r": "x"}')


def test_frames_concatenated_in_one_message_decode_in_order() -> None:
    frames = [
        ReplyFrame("r1", 0, FrameKind.CHUNKS, b"data: {\"a\": \"\\n\"}\n\n", {"provider": "p"}),
        ReplyFrame("r2", 4, FrameKind.RESPONSE, b"", {}, 3),
        ReplyFrame("r1", 1, FrameKind.DONE, b"data: [DONE]\n\n"),
    ]
    assert ReplyFrame.decode_many(b"".join(f.encode() for f in frames)) == frames


@pytest.mark.parametrize(
    "raw",
    [
        b'{"r": "x", "s": 0, "k": "c", "n": 99}\nshort',  # payload cut off
        b'{"r": "x", "s": 0, "k": "c", "n": -1}\n',
        b'{"r": "x", "s": 0, "k": "c"}\n',  # no length
        b'{"r": "x", "s": 0, "k": "zz", "n": 0}\n',  # unknown kind
        b'{"r": "x", "s": 0, "k": [1], "n": 0}\n',
    ],
)
def test_truncated_or_unsized_frames_raise_message_error(raw: bytes) -> None:
    with pytest.raises(MessageError):
        ReplyFrame.decode_many(raw)
