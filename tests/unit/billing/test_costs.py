"""Costs to the nano-dollar for known usage, at every price in the shipped catalog.

The expected figure is computed independently, in exact decimals: USD per million
tokens times tokens, in nano-dollars, rounded half-up once. Cached input is billed at
the cached price (when the offer has one), and reasoning tokens as output: they are
part of `completion_tokens`, as OpenAI reports them.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest

from shared.catalog import load_catalog
from shared.money import Price

USAGES = [
    # prompt, cached (part of prompt), completion (reasoning included)
    (1, 0, 1),
    (1000, 0, 500),
    (1000, 200, 500),
    (123_457, 100_000, 98_765),
    (0, 0, 0),
]
OFFERS = [
    pytest.param(model.id, offer, id=f"{model.id}@{offer.provider}")
    for model in load_catalog().models
    for offer in model.offers
]


def expected_nusd(price: Price, prompt: int, cached: int, completion: int) -> int:
    cached_price = (
        price.cached_input_per_mtok
        if price.cached_input_per_mtok is not None
        else price.input_per_mtok
    )
    usd = (
        price.input_per_mtok * (prompt - cached)
        + cached_price * cached
        + price.output_per_mtok * completion
    ) / Decimal(10**6)
    return int((usd * 10**9).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@pytest.mark.parametrize("model_id, offer", OFFERS)
def test_every_catalog_price_to_the_nano_dollar(model_id: str, offer: object) -> None:
    price = offer.price  # type: ignore[attr-defined]
    for prompt, cached, completion in USAGES:
        assert price.cost_nusd(prompt, completion, cached) == expected_nusd(
            price, prompt, cached, completion
        )


def test_known_figures() -> None:
    mini = Price(Decimal("0.15"), Decimal("0.60"), Decimal("0.075"))
    # 800 fresh input + 200 cached + 500 output (of which 300 reasoning, billed as output).
    assert mini.cost_nusd(1000, 500, 200) == 800 * 150 + 200 * 75 + 500 * 600 == 435_000
    # A sub-nano-dollar remainder rounds half-up once, on the total.
    odd = Price(Decimal("0.0005"), Decimal("0.0015"))
    assert odd.cost_nusd(1, 0) == 1  # 0.5 nUSD -> 1
    assert odd.cost_nusd(3, 1) == 3  # 1.5 + 1.5 = 3.0 nUSD
    # No cached price: cached tokens cost the input price.
    plain = Price(Decimal("2.50"), Decimal("10.00"))
    assert plain.cost_nusd(100, 10, 40) == 100 * 2500 + 10 * 10_000
