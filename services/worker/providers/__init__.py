"""The provider registry: catalog `adapter` name -> adapter. A new provider is one line here."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from services.worker.providers.anthropic import AnthropicAdapter
from services.worker.providers.base import ProviderAdapter
from services.worker.providers.google import GoogleAdapter
from services.worker.providers.openai_compat import OpenAICompatible

# Request fields Together's chat API does not document (wire-formats doc §4.2, §5.3).
# `logprobs` is an integer there, a boolean on OpenAI: dropping beats a wrong meaning.
TOGETHER_DROP_PARAMS = frozenset(
    {
        "audio",
        "logprobs",
        "metadata",
        "modalities",
        "prediction",
        "prompt_cache_key",
        "safety_identifier",
        "service_tier",
        "store",
        "top_logprobs",
        "user",
        "verbosity",
        "web_search_options",
    }
)

REGISTRY: dict[str, ProviderAdapter] = {
    "openai": OpenAICompatible("openai"),
    "together": OpenAICompatible("together", drop_params=TOGETHER_DROP_PARAMS, stop_as_list=True),
    "openai_compat": OpenAICompatible("openai_compat"),
    "google": GoogleAdapter("google"),
    "anthropic": AnthropicAdapter("anthropic"),
}


def resolve_adapters(
    adapter_names: Iterable[str], *, search_dir: Path | None = None
) -> dict[str, ProviderAdapter]:
    """Every adapter the catalog names: built in, or a custom class by dotted path.

    A custom class that cannot be loaded stops the worker at start, not at the first call.
    """
    from services.worker.providers.custom import load_adapter

    resolved: dict[str, ProviderAdapter] = {}
    for name in set(adapter_names):
        adapter = REGISTRY.get(name)
        resolved[name] = adapter if adapter is not None else load_adapter(name, search_dir=search_dir)
    return resolved
