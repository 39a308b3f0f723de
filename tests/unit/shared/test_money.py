from __future__ import annotations

from decimal import Decimal

import pytest

from shared.money import Price, format_usd, usd_to_nusd


class TestConversions:
    def test_usd_to_nusd_is_exact(self) -> None:
        assert usd_to_nusd("10") == 10_000_000_000
        assert usd_to_nusd(Decimal("0.01")) == 10_000_000
        assert usd_to_nusd("0.000000001") == 1

    def test_sub_nano_precision_refused(self) -> None:
        with pytest.raises(ValueError):
            usd_to_nusd("0.0000000001")

    def test_format(self) -> None:
        assert format_usd(12_500) == "0.000012500"
        assert format_usd(-1_500_000_000) == "-1.500000000"


class TestPrice:
    def test_cost_uses_each_rate(self) -> None:
        price = Price(Decimal("2.50"), Decimal("10.00"), Decimal("1.25"))
        # 1000 prompt (200 cached) at 2500/1250 nUSD per token, 100 out at 10000.
        assert price.cost_nusd(1000, 100, 200) == 800 * 2500 + 200 * 1250 + 100 * 10_000

    def test_fractional_prices_round_once_half_up(self) -> None:
        price = Price(Decimal("0.0001"), Decimal("0.0003"))
        # 0.1 + 0.3 nUSD per token pair: 3 tokens each = 1.2 -> 1
        assert price.cost_nusd(3, 3) == 1
        assert price.cost_nusd(5, 0) == 1  # 0.5 rounds up

    def test_cached_capped_by_prompt(self) -> None:
        price = Price(Decimal("1"), Decimal("1"), Decimal("0.5"))
        assert price.cost_nusd(10, 0, 50) == 10 * 500


def test_compact_usd_is_exact_and_valid_json() -> None:
    import orjson

    from shared.money import format_usd_compact

    cases = {0: "0", 12_500: "0.0000125", 2 * 10**9: "2", -5 * 10**8: "-0.5", 1: "0.000000001"}
    for nusd, text in cases.items():
        assert format_usd_compact(nusd) == text
        assert orjson.dumps({"cost": orjson.Fragment(text.encode())}) == b'{"cost":' + text.encode() + b"}"


def test_integer_fast_path_equals_decimal_arithmetic() -> None:
    """Costs are computed in scaled integers; they must equal exact Decimal arithmetic."""
    import random
    from decimal import ROUND_HALF_UP

    rng = random.Random(7)
    for _ in range(5000):
        prices = [Decimal(rng.randint(0, 10**6)) / Decimal(10 ** rng.randint(0, 9)) for _ in range(3)]
        prompt, completion = rng.randint(0, 10**6), rng.randint(0, 10**6)
        cached = rng.randint(0, prompt)
        exact = (
            prices[0] * (prompt - cached) + prices[2] * cached + prices[1] * completion
        ) * 1000
        expected = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
        assert Price(prices[0], prices[1], prices[2]).cost_nusd(prompt, completion, cached) == expected
