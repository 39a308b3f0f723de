"""free_port never hands the same port to two callers of one process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from services import runner


class _Socket:
    """Binds to whatever port the scripted kernel offers next."""

    offers: Iterator[int]

    def __enter__(self) -> _Socket:
        return self

    def __exit__(self, *_exc: Any) -> None:
        return None

    def bind(self, _address: tuple[str, int]) -> None:
        self.port = next(self.offers)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_a_port_the_kernel_offers_twice_is_handed_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Otherwise api and fake provider can be told the same port; the api then fails to
    # bind, and its health check is answered by the fake.
    _Socket.offers = iter([41001, 41001, 41001, 41002])
    monkeypatch.setattr(runner.socket, "socket", _Socket)
    monkeypatch.setattr(runner, "_handed_out", set())
    assert [runner.free_port(), runner.free_port()] == [41001, 41002]

