"""Exact money: integer nano-dollars (1 USD = 10**9 nUSD), never floats.

Prices in the catalog are decimal strings in USD per million tokens. One token at
$X per million costs X * 1000 nUSD. A cost is the exact sum over token kinds, rounded
once, half-up, to a whole nano-dollar. It is computed in integers (prices scaled by
10**9, so any price with up to nine decimals is exact), with a Decimal fallback for
finer prices: the hot path never does Decimal arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


# Prices scaled by this are integers when they have at most nine decimals.
_PRICE_SCALE = 10**9
# scaled price x tokens / _SCALED_PER_NUSD = nUSD  (10**9 / 10**6 tokens * 10**9 / 10**9)
_SCALED_PER_NUSD = _PRICE_SCALE * _TOKENS_PER_PRICE_UNIT // NUSD_PER_USD


def _scaled(price: Decimal) -> int | None:
    scaled = price * _PRICE_SCALE
    return int(scaled) if scaled == scaled.to_integral_value() else None


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens, as exact decimals."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    _scaled: tuple[int, int, int] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cached = self.cached_input_per_mtok
        parts = (
            _scaled(self.input_per_mtok),
            _scaled(self.output_per_mtok),
            _scaled(cached if cached is not None else self.input_per_mtok),
        )
        ints = None if None in parts else (parts[0], parts[1], parts[2])
        object.__setattr__(self, "_scaled", ints)

    def cost_nusd(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
    ) -> int:
        """Cost of one call. `prompt_tokens` includes `cached_tokens`; reasoning is in completion."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        if self._scaled is not None:
            p_in, p_out, p_cached = self._scaled
            total = p_in * (prompt_tokens - cached) + p_cached * cached + p_out * completion_tokens
            whole, rest = divmod(total, _SCALED_PER_NUSD)
            return whole + (1 if 2 * rest >= _SCALED_PER_NUSD else 0)
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
