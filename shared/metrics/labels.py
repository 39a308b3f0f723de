"""Label values with a bounded set: what the catalog names, or "other".

A label value that comes from a request (a model name a client typed, an upstream's
error code) could otherwise create a new time series per distinct value; Prometheus
keeps every series in memory, so an unbounded label is a slow memory leak.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shared.catalog import Catalog

OTHER = "other"

# Error codes the gateway itself assigns to provider failures (adapters, upstream I/O,
# fallback). Anything else an upstream sends is counted as "other".
KNOWN_ERROR_CODES = frozenset(
    {
        "timeout",
        "connection_error",
        "bad_response",
        "upstream_error",
        "upstream_auth_error",
        "rate_limit_exceeded",
        "insufficient_quota",
        "model_not_found",
        "context_length_exceeded",
        "content_filter",
        "content_policy_violation",
        "invalid_value",
        "invalid_request_error",
        "overloaded",
        "service_unavailable",
        "no_provider",
        "circuit_open",
    }
)


class LabelBounds:
    """Maps free-form names to label values drawn from the catalog."""

    def __init__(self, catalog: Catalog, *, error_codes: Iterable[str] = KNOWN_ERROR_CODES):
        self._models = {
            name: model.id for model in catalog.models for name in (model.id, *model.aliases)
        }
        self._providers = frozenset(catalog.providers)
        self._codes = frozenset(error_codes)

    def model(self, name: str | None) -> str:
        """The catalog id of a model name or alias; "other" for anything else."""
        if not name:
            return OTHER
        return self._models.get(name, OTHER)

    def provider(self, name: str | None) -> str:
        """A catalog provider's name; "none" when no provider was reached, else "other"."""
        if not name:
            return "none"
        return name if name in self._providers else OTHER

    def error_code(self, code: str | None) -> str:
        if not code:
            return "none"
        return code if code in self._codes else OTHER


def status_label(status: int | None) -> str:
    """An HTTP status as a label ("none" when there was no response at all)."""
    if status is None or not 100 <= status <= 599:
        return "none"
    return str(status)


class Children:
    """`metric.labels(*values)` memoised: the hot path pays a dict lookup, not a lock.

    Safe because every value passed here comes from a bounded set.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child
