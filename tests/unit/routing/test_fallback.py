"""The fallback loop with scripted calls: retries, skips, business errors, circuits."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from fakeredis import FakeAsyncRedis

from services.worker.fallback import RetryPolicy, first_success
from services.worker.providers.base import Target
from services.worker.routing import ProviderAccess, ProviderPrefs, plan
from shared.catalog import parse_catalog
from shared.circuit import CircuitPolicy, Circuits
from shared.errors import FinalProviderError, RetryableProviderError
from shared.messages import Attempt

CATALOG = parse_catalog(
    {
        "providers": {n: {"adapter": "openai", "base_url": "http://x", "key_env": ""} for n in "abc"},
        "models": [
            {
                "id": "m",
                "offers": [
                    {"provider": "a", "input": "1", "output": "1"},
                    {"provider": "b", "input": "2", "output": "2"},
                    {"provider": "c", "input": "3", "output": "3"},
                ],
            }
        ],
    }
)
TARGETS = plan(["m"], CATALOG, {n: ProviderAccess("", "http://x") for n in "abc"}, ProviderPrefs(), {})
FAST = RetryPolicy(max_retries=1, backoff_base_s=0.001, backoff_cap_s=0.002)


def deadline(seconds: float = 30) -> int:
    return int((time.time() + seconds) * 1000)


def script(outcomes: dict[str, list[Exception | None]], calls: list[str]) -> Callable[[Target], object]:
    async def call(target: Target) -> None:
        calls.append(target.name)
        outcome = outcomes[target.name].pop(0) if outcomes[target.name] else None
        if outcome is not None:
            raise outcome

    return call


def boom(status: int = 500, retry_after: float | None = None) -> RetryableProviderError:
    return RetryableProviderError("boom", upstream_status=status, retry_after_s=retry_after)


class TestFirstSuccess:
    async def test_falls_back_at_once_and_retries_only_the_last_candidate(self) -> None:
        calls: list[str] = []
        attempts: list[Attempt] = []
        await first_success(
            TARGETS, script({"a": [boom()], "b": [boom()], "c": [boom(), None]}, calls),
            attempts=attempts, can_fall_back=lambda: True, deadline_ms=deadline(), retry=FAST,
        )  # fmt: skip
        assert calls == ["a", "b", "c", "c"]
        assert [a.outcome for a in attempts] == ["technical"] * 3 + ["ok"]

    async def test_quick_retry_on_the_same_provider_when_configured(self) -> None:
        calls: list[str] = []
        policy = RetryPolicy(max_retries=1, backoff_base_s=0.001, quick_retry_s=1.0)
        await first_success(
            TARGETS, script({"a": [boom(), None], "b": [], "c": []}, calls),
            attempts=[], can_fall_back=lambda: True, deadline_ms=deadline(), retry=policy,
        )  # fmt: skip
        assert calls == ["a", "a"]

    async def test_long_retry_after_skips_to_next_candidate(self) -> None:
        calls: list[str] = []
        await first_success(
            TARGETS, script({"a": [boom(429, retry_after=20)], "b": [None], "c": []}, calls),
            attempts=[], can_fall_back=lambda: True, deadline_ms=deadline(), retry=FAST,
        )  # fmt: skip
        assert calls == ["a", "b"]

    async def test_business_error_stops_at_once(self) -> None:
        calls: list[str] = []
        with pytest.raises(FinalProviderError):
            await first_success(
                TARGETS, script({"a": [FinalProviderError("bad", upstream_status=400)], "b": [], "c": []}, calls),
                attempts=[], can_fall_back=lambda: True, deadline_ms=deadline(), retry=FAST,
            )  # fmt: skip
        assert calls == ["a"]

    async def test_no_fallback_after_content(self) -> None:
        calls: list[str] = []
        with pytest.raises(RetryableProviderError):
            await first_success(
                TARGETS, script({"a": [boom()], "b": [None], "c": []}, calls),
                attempts=[], can_fall_back=lambda: False, deadline_ms=deadline(), retry=FAST,
            )  # fmt: skip
        assert calls == ["a"]

    async def test_all_failed_gives_502_and_rate_limit_gives_429(self) -> None:
        with pytest.raises(RetryableProviderError) as info:
            await first_success(
                TARGETS, script({n: [boom()] * 2 for n in "abc"}, []),
                attempts=[], can_fall_back=lambda: True, deadline_ms=deadline(), retry=FAST,
            )  # fmt: skip
        assert info.value.http_status == 502
        with pytest.raises(RetryableProviderError) as info:
            await first_success(
                TARGETS[-1:], script({"c": [boom(429, 0.001)] * 2}, []),
                attempts=[], can_fall_back=lambda: True, deadline_ms=deadline(), retry=FAST,
            )  # fmt: skip
        assert info.value.http_status == 429
        assert info.value.headers["retry-after"] == "1"

    async def test_open_circuit_is_skipped_then_closes_on_success(self) -> None:
        redis = FakeAsyncRedis()
        circuits = Circuits(redis, CircuitPolicy(failure_threshold=2, cooldown_ms=60_000))
        calls: list[str] = []
        attempts: list[Attempt] = []
        for _ in range(2):
            await first_success(
                TARGETS, script({"a": [boom()], "b": [None], "c": []}, calls),
                attempts=attempts, can_fall_back=lambda: True, deadline_ms=deadline(),
                circuits=circuits, retry=FAST,
            )  # fmt: skip
        assert attempts[2].circuit_opened  # the second failure opened a's circuit
        calls.clear()
        await circuits.refresh([(t.name, t.model_id) for t in TARGETS])
        await first_success(
            TARGETS, script({"a": [], "b": [None], "c": []}, calls),
            attempts=[], can_fall_back=lambda: True, deadline_ms=deadline(), circuits=circuits, retry=FAST,
        )  # fmt: skip
        assert calls == ["b"]  # a is skipped while its circuit is open
        await redis.aclose()

    async def test_every_circuit_open_is_503(self) -> None:
        redis = FakeAsyncRedis()
        circuits = Circuits(redis, CircuitPolicy(failure_threshold=1, cooldown_ms=60_000))
        for t in TARGETS:
            await circuits.record_failure(t.name, t.model_id)
        await circuits.refresh([(t.name, t.model_id) for t in TARGETS])
        with pytest.raises(RetryableProviderError) as info:
            await first_success(
                TARGETS, script({n: [] for n in "abc"}, []),
                attempts=[], can_fall_back=lambda: True, deadline_ms=deadline(), circuits=circuits,
            )  # fmt: skip
        assert info.value.http_status == 503
        await redis.aclose()
