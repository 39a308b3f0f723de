"""Exact money: integer nano-dollars (1 USD = 10**9 nUSD), never floats.

Prices in the catalog are decimal strings in USD per million tokens. One token at
$X per million costs X * 1000 nUSD, so prices with up to three decimals are
integers per token; finer prices stay Decimal until the total is rounded once,
half-up, to a whole nano-dollar.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

NUSD_PER_USD = 10**9
_TOKENS_PER_PRICE_UNIT = 10**6


def usd_to_nusd(amount: Decimal | str | int) -> int:
    """Convert a USD amount to nano-dollars; raises on sub-nano precision."""
    value = Decimal(amount) * NUSD_PER_USD
    if value != value.to_integral_value():
        raise ValueError(f"amount {amount} has more precision than one nano-dollar")
    return int(value)


def nusd_to_usd(amount_nusd: int) -> Decimal:
    return Decimal(amount_nusd) / NUSD_PER_USD


def format_usd(amount_nusd: int) -> str:
    """Render nano-dollars as a plain decimal string with 9 places, e.g. '0.000012500'."""
    sign = "-" if amount_nusd < 0 else ""
    whole, frac = divmod(abs(amount_nusd), NUSD_PER_USD)
    return f"{sign}{whole}.{frac:09d}"


def format_usd_compact(amount_nusd: int) -> str:
    """The shortest exact decimal for nano-dollars, e.g. '0.0000125', '2', '-0.5'.

    Valid as a JSON number: how `usage.cost` is written (pre-formatted, so no binary
    float ever rounds it).
    """
    text = format_usd(amount_nusd).rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens, as exact decimals."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None

    def cost_nusd(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
    ) -> int:
        """Cost of one call. `prompt_tokens` includes `cached_tokens`; reasoning is in completion."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_price = (
            self.cached_input_per_mtok
            if self.cached_input_per_mtok is not None
            else self.input_per_mtok
        )
        total_usd_x_mtok = (
            self.input_per_mtok * (prompt_tokens - cached)
            + cached_price * cached
            + self.output_per_mtok * completion_tokens
        )
        nusd = total_usd_x_mtok * NUSD_PER_USD / _TOKENS_PER_PRICE_UNIT
        return int(nusd.quantize(Decimal(1), rounding=ROUND_HALF_UP))
