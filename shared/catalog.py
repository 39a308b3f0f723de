"""The model catalog: which providers serve which models, at what price.

Loaded once from `CATALOG_PATH` (YAML), or from the `catalog.yaml` shipped beside this
module. Everything here is immutable and shared by the api (listing, estimates), the
worker (routing) and billing (cost).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from shared.money import Price

DEFAULT_CATALOG = Path(__file__).with_name("catalog.yaml")
DEMO_PROVIDER = "fake"


class CatalogError(ValueError):
    """The catalog file is malformed."""


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    adapter: str
    base_url: str
    key_env: str = ""
    # Request fields this provider rejects; removed before the call.
    drop_params: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Offer:
    """One provider's offer of one model."""

    provider: str
    upstream_model: str
    price: Price
    max_output_tokens: int = 4096
    context_window: int = 128_000


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    offers: tuple[Offer, ...]
    owned_by: str = "gateway"
    aliases: tuple[str, ...] = ()
    capabilities: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Catalog:
    providers: Mapping[str, ProviderConfig]
    models: tuple[Model, ...]
    _index: Mapping[str, Model] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, providers: Mapping[str, ProviderConfig], models: Iterable[Model]) -> Catalog:
        ordered = tuple(models)
        index: dict[str, Model] = {}
        for model in ordered:
            for name in (model.id, *model.aliases):
                if name in index:
                    raise CatalogError(f"model name {name!r} is defined twice")
                index[name] = model
            for offer in model.offers:
                if offer.provider not in providers:
                    raise CatalogError(f"model {model.id!r} names unknown provider {offer.provider!r}")
        return cls(providers=dict(providers), models=ordered, _index=index)

    def find(self, name: str) -> Model | None:
        return self._index.get(name)

    def routed_to(self, provider: ProviderConfig) -> Catalog:
        """The same models and prices, every offer served by `provider` (demo mode)."""
        models = [
            replace(m, offers=tuple(replace(o, provider=provider.name) for o in m.offers))
            for m in self.models
        ]
        return Catalog.build({provider.name: provider}, models)


def _price(raw: Mapping[str, Any], where: str) -> Price:
    try:
        cached = raw.get("cached_input")
        return Price(
            input_per_mtok=Decimal(str(raw["input"])),
            output_per_mtok=Decimal(str(raw["output"])),
            cached_input_per_mtok=Decimal(str(cached)) if cached is not None else None,
        )
    except (KeyError, ArithmeticError) as exc:
        raise CatalogError(f"{where}: price needs decimal 'input' and 'output'") from exc


def parse_catalog(data: Mapping[str, Any]) -> Catalog:
    providers = {
        name: ProviderConfig(
            name=name,
            adapter=str(cfg.get("adapter", name)),
            base_url=str(cfg["base_url"]).rstrip("/"),
            key_env=str(cfg.get("key_env", "")),
            drop_params=frozenset(cfg.get("drop_params", ())),
        )
        for name, cfg in data.get("providers", {}).items()
    }
    models = []
    for raw in data.get("models", []):
        model_id = str(raw["id"])
        offers = tuple(
            Offer(
                provider=str(o["provider"]),
                upstream_model=str(o.get("upstream_model", model_id)),
                price=_price(o, f"model {model_id}"),
                max_output_tokens=int(o.get("max_output_tokens", 4096)),
                context_window=int(o.get("context_window", 128_000)),
            )
            for o in raw.get("offers", [])
        )
        if not offers:
            raise CatalogError(f"model {model_id!r} has no offers")
        models.append(
            Model(
                id=model_id,
                offers=offers,
                owned_by=str(raw.get("owned_by", "gateway")),
                aliases=tuple(raw.get("aliases", ())),
                capabilities=frozenset(raw.get("capabilities", ())),
            )
        )
    return Catalog.build(providers, models)


def load_catalog(path: str | Path = "") -> Catalog:
    source = Path(path) if path else DEFAULT_CATALOG
    try:
        data = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"cannot read catalog {source}: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogError(f"catalog {source} must be a mapping with 'providers' and 'models'")
    try:
        return parse_catalog(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CatalogError(f"catalog {source}: {exc}") from exc


def catalog_for(catalog_path: str, *, demo_base_url: str | None) -> Catalog:
    """The configured catalog; in demo mode every model is served by the fake provider."""
    catalog = load_catalog(catalog_path)
    if demo_base_url:
        demo = ProviderConfig(
            name=DEMO_PROVIDER, adapter="openai", base_url=demo_base_url, key_env="API_KEY_FAKE"
        )
        return catalog.routed_to(demo)
    return catalog
