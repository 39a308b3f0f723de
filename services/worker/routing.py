"""Which providers may serve a request, in the order to try them. Pure functions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.worker.providers.base import Target
from shared.catalog import Catalog, ProviderConfig
from shared.settings import Settings


@dataclass(frozen=True, slots=True)
class ProviderAccess:
    api_key: str
    base_url: str


def provider_access(catalog: Catalog, settings: Settings) -> dict[str, ProviderAccess]:
    """Providers the worker can call: those whose key is set or that need none.

    `BASE_URL_<NAME>` overrides the catalog's base URL for a provider.
    """
    access: dict[str, ProviderAccess] = {}
    for name, provider in catalog.providers.items():
        key = _key_for(provider, settings.provider_keys)
        if provider.key_env and not key:
            continue
        base_url = settings.provider_base_urls.get(name, provider.base_url)
        access[name] = ProviderAccess(api_key=key, base_url=base_url)
    return access


def _key_for(provider: ProviderConfig, keys: Mapping[str, str]) -> str:
    if not provider.key_env:
        return ""
    return keys.get(provider.key_env.removeprefix("API_KEY_").lower(), "")


def candidates(
    model_name: str,
    catalog: Catalog,
    access: Mapping[str, ProviderAccess],
    *,
    supported_adapters: frozenset[str],
) -> list[Target]:
    """Every enabled offer of the model, in catalog order (the first is preferred)."""
    model = catalog.find(model_name)
    if model is None:
        return []
    targets = []
    for offer in model.offers:
        provider = catalog.providers[offer.provider]
        creds = access.get(offer.provider)
        if creds is None or provider.adapter not in supported_adapters:
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
