"""Which providers may serve a request, in the order to try them. Pure functions.

Order, most specific first: the request's `provider` object (OpenRouter style: `order`,
`only`, `ignore`, `allow_fallbacks`, `sort`), then the user's stored preferences (same
fields, merged under the request's), then the default policy, which weighs price
against measured health and speed. The request's `models` list adds fallback models,
tried after every candidate of the one asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.worker.providers.base import Target
from shared.catalog import Catalog
from shared.provider_access import ProviderAccess, provider_access
from shared.provider_stats import EMPTY, TargetStats

SORTS = frozenset({"price", "latency", "throughput"})

__all__ = ["ProviderAccess", "ProviderPrefs", "candidates", "order_targets", "plan", "provider_access"]


@dataclass(frozen=True, slots=True)
class ProviderPrefs:
    order: tuple[str, ...] = ()
    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    sort: str | None = None
    # Which fields were given, so a request can override a user's preference field by field.
    given: frozenset[str] = field(default=frozenset(), compare=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> ProviderPrefs:
        if not raw:
            return cls()
        only = raw.get("only")
        sort = raw.get("sort")
        return cls(
            order=tuple(str(p) for p in raw.get("order") or ()),
            only=frozenset(str(p) for p in only) if only is not None else None,
            ignore=frozenset(str(p) for p in raw.get("ignore") or ()),
            allow_fallbacks=bool(raw.get("allow_fallbacks", True)),
            sort=str(sort) if sort in SORTS else None,
            given=frozenset(k for k in raw if raw.get(k) is not None),
        )

    def over(self, base: ProviderPrefs) -> ProviderPrefs:
        """These preferences, falling back to `base` for fields not given here."""

        def pick(name: str) -> Any:
            return getattr(self if name in self.given else base, name)

        return ProviderPrefs(
            order=pick("order"),
            only=pick("only"),
            ignore=pick("ignore"),
            allow_fallbacks=pick("allow_fallbacks"),
            sort=pick("sort"),
            given=self.given | base.given,
        )


def candidates(
    model_name: str,
    catalog: Catalog,
    access: Mapping[str, ProviderAccess],
    *,
    supported_adapters: frozenset[str] | None = None,
    needs: frozenset[str] = frozenset(),
) -> list[Target]:
    """Every enabled offer of the model that has what the request needs, in catalog order."""
    model = catalog.find(model_name)
    if model is None or not needs <= model.capabilities | _IMPLICIT:
        return []
    targets = []
    for offer in model.offers:
        provider = catalog.providers[offer.provider]
        creds = access.get(offer.provider)
        if creds is None:
            continue
        if supported_adapters is not None and provider.adapter not in supported_adapters:
            continue
        targets.append(
            Target(
                model_id=model.id,
                provider=provider,
                offer=offer,
                api_key=creds.api_key,
                base_url=creds.base_url,
            )
        )
    return targets


# Every model streams; catalogs need not say so.
_IMPLICIT = frozenset({"streaming"})


def blended_price(target: Target) -> float:
    """Input plus output price per million tokens: a plain ordering key, not money."""
    price = target.offer.price
    return float(price.input_per_mtok + price.output_per_mtok)


def default_score(target: Target, stats: TargetStats) -> float:
    """Lower is better: price, divided by health squared, stretched by slowness."""
    health = stats.smoothed_success
    p50_s = (stats.latency_ms[0] or 0.0) / 1000
    return (blended_price(target) + 0.01) * (1 + p50_s / 10) / (health * health)


def order_targets(
    targets: Sequence[Target],
    prefs: ProviderPrefs,
    stats: Mapping[tuple[str, str], TargetStats],
) -> list[Target]:
    pool = [
        t
        for t in targets
        if t.name not in prefs.ignore and (prefs.only is None or t.name in prefs.only)
    ]

    def stat(t: Target) -> TargetStats:
        return stats.get((t.name, t.model_id), EMPTY)

    # Unknown figures sort first (0 / +inf): an untried provider gets measured.
    if prefs.sort == "price":
        ranked = sorted(pool, key=blended_price)
    elif prefs.sort == "latency":
        ranked = sorted(pool, key=lambda t: stat(t).latency_ms[0] or 0.0)
    elif prefs.sort == "throughput":
        ranked = sorted(pool, key=lambda t: -(stat(t).tokens_per_s_p50 or math.inf))
    else:
        ranked = sorted(pool, key=lambda t: default_score(t, stat(t)))

    if prefs.order:
        position = {name: i for i, name in enumerate(prefs.order)}
        first = sorted((t for t in ranked if t.name in position), key=lambda t: position[t.name])
        rest = [t for t in ranked if t.name not in position]
        ranked = first + ([] if not prefs.allow_fallbacks else rest)
    elif not prefs.allow_fallbacks:
        ranked = ranked[:1]
    return ranked


def plan(
    model_names: Sequence[str],
    catalog: Catalog,
    access: Mapping[str, ProviderAccess],
    prefs: ProviderPrefs,
    stats: Mapping[tuple[str, str], TargetStats],
    *,
    supported_adapters: frozenset[str] | None = None,
    needs: frozenset[str] = frozenset(),
) -> list[Target]:
    """The targets to try, in order: the asked model's, then each fallback model's."""
    seen: set[str] = set()
    result: list[Target] = []
    for name in model_names:
        model = catalog.find(name)
        if model is None or model.id in seen:
            continue
        seen.add(model.id)
        found = candidates(
            name, catalog, access, supported_adapters=supported_adapters, needs=needs
        )
        result.extend(order_targets(found, prefs, stats))
        if result and not prefs.allow_fallbacks:
            break
    return result
