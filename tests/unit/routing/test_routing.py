"""Candidate selection and ordering: pure functions over a small catalog."""

from __future__ import annotations

from typing import Any

from services.worker.routing import ProviderAccess, ProviderPrefs, order_targets, plan
from shared.catalog import parse_catalog
from shared.provider_stats import Sample, summarise

CATALOG = parse_catalog(
    {
        "providers": {
            name: {"adapter": "openai", "base_url": f"http://{name}", "key_env": ""}
            for name in ("cheap", "pricey", "mid", "other")
        },
        "models": [
            {
                "id": "m1",
                "capabilities": ["tools"],
                "offers": [
                    {"provider": "pricey", "input": "5", "output": "15"},
                    {"provider": "cheap", "input": "0.1", "output": "0.2"},
                    {"provider": "mid", "input": "1", "output": "2"},
                ],
            },
            {"id": "m2", "offers": [{"provider": "other", "input": "1", "output": "1"}]},
        ],
    }
)
ACCESS = {name: ProviderAccess("", f"http://{name}") for name in CATALOG.providers}


def names(targets: Any) -> list[str]:
    return [t.name for t in targets]


def stats_for(**per_provider: list[Sample]) -> dict[tuple[str, str], Any]:
    return {(p, "m1"): summarise(samples, now_ms=10_000) for p, samples in per_provider.items()}


def ok(latency_ms: int, tps: float | None = None) -> Sample:
    return Sample(ts_ms=9_000, ok=True, latency_ms=latency_ms, tokens_per_s=tps)


def failed() -> Sample:
    return Sample(ts_ms=9_000, ok=False, latency_ms=5)


class TestPlan:
    def test_default_without_stats_is_cheapest_first(self) -> None:
        assert names(plan(["m1"], CATALOG, ACCESS, ProviderPrefs(), {})) == ["cheap", "mid", "pricey"]

    def test_unhealthy_provider_is_demoted_by_default_policy(self) -> None:
        stats = stats_for(cheap=[failed()] * 20, mid=[ok(100)] * 20)
        assert names(plan(["m1"], CATALOG, ACCESS, ProviderPrefs(), stats))[0] == "mid"

    def test_order_only_ignore(self) -> None:
        prefs = ProviderPrefs.from_dict({"order": ["pricey", "mid"]})
        assert names(plan(["m1"], CATALOG, ACCESS, prefs, {})) == ["pricey", "mid", "cheap"]
        prefs = ProviderPrefs.from_dict({"only": ["mid", "pricey"]})
        assert names(plan(["m1"], CATALOG, ACCESS, prefs, {})) == ["mid", "pricey"]
        prefs = ProviderPrefs.from_dict({"ignore": ["cheap"]})
        assert names(plan(["m1"], CATALOG, ACCESS, prefs, {})) == ["mid", "pricey"]

    def test_allow_fallbacks_false(self) -> None:
        prefs = ProviderPrefs.from_dict({"order": ["pricey"], "allow_fallbacks": False})
        assert names(plan(["m1", "m2"], CATALOG, ACCESS, prefs, {})) == ["pricey"]
        prefs = ProviderPrefs.from_dict({"allow_fallbacks": False})
        assert names(plan(["m1"], CATALOG, ACCESS, prefs, {})) == ["cheap"]

    def test_sort_latency_prefers_fast_and_tries_unknown(self) -> None:
        stats = stats_for(cheap=[ok(900)] * 5, pricey=[ok(50)] * 5)
        prefs = ProviderPrefs.from_dict({"sort": "latency"})
        # mid has no samples yet: it sorts first so it gets measured.
        assert names(plan(["m1"], CATALOG, ACCESS, prefs, stats)) == ["mid", "pricey", "cheap"]

    def test_sort_throughput_and_price(self) -> None:
        stats = stats_for(cheap=[ok(100, 10)] * 3, mid=[ok(100, 50)] * 3, pricey=[ok(100, 30)] * 3)
        prefs = ProviderPrefs.from_dict({"sort": "throughput"})
        assert names(plan(["m1"], CATALOG, ACCESS, prefs, stats)) == ["mid", "pricey", "cheap"]
        prefs = ProviderPrefs.from_dict({"sort": "price", "order": ["mid"]})
        assert names(order_targets(plan(["m1"], CATALOG, ACCESS, ProviderPrefs(), {}), prefs, {})) == [
            "mid", "cheap", "pricey",
        ]  # fmt: skip

    def test_fallback_models_come_after_and_say_which_model(self) -> None:
        targets = plan(["m1", "m2"], CATALOG, ACCESS, ProviderPrefs(), {})
        assert [(t.name, t.model_id) for t in targets][-1] == ("other", "m2")

    def test_capabilities_and_access_filter(self) -> None:
        assert plan(["m2"], CATALOG, ACCESS, ProviderPrefs(), {}, needs=frozenset({"tools"})) == []
        assert names(plan(["m1", "m2"], CATALOG, ACCESS, ProviderPrefs(), {}, needs=frozenset({"tools"}))) == [
            "cheap", "mid", "pricey",
        ]  # fmt: skip
        partial = {"mid": ACCESS["mid"]}
        assert names(plan(["m1"], CATALOG, partial, ProviderPrefs(), {})) == ["mid"]

    def test_request_prefs_override_user_prefs_field_by_field(self) -> None:
        user = ProviderPrefs.from_dict({"order": ["pricey"], "ignore": ["mid"]})
        request = ProviderPrefs.from_dict({"order": ["cheap"]})
        merged = request.over(user)
        assert merged.order == ("cheap",)
        assert merged.ignore == frozenset({"mid"})
