"""Which providers this deployment can call, and with what credentials and base URL.

A provider is usable when its key variable (`API_KEY_<NAME>`) is set, or when it needs
none; `BASE_URL_<NAME>` overrides the catalog's base URL. The worker routes with it; the
api uses it to say which offers are available.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
