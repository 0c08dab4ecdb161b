"""What makes a tick valid (SPEC §2): one table of rules, read by the per-tick validator
(``transforms.ticks``) and the vectorised one (``transforms.tick_columns``) alike.

The numeric bounds exist so that no accepted tick can break the arithmetic after it: with
price × amount ≤ MAX_NOTIONAL, a candle of a billion ticks still sums far below float64's range,
and with price and a non-zero amount ≥ their minimum, VWAP (Σ price·amount / Σ amount) cannot
underflow to 0. They are wide enough for every real market: prices from sub-satoshi tokens
(1e-10 BTC) to BTC in Indonesian rupiah (~2e9), quantities up to meme-coin lots (~1e12).

Text fields must survive every encoder after parsing: UTF-8 (Beam's string coder, BigQuery,
JSON files), so a lone surrogate is refused here rather than crashing a key coder downstream.
"""
from __future__ import annotations

import math
import re
from typing import Any

MIN_PRICE = 1e-12
MAX_PRICE = 1e12
MIN_AMOUNT = 1e-12  # the smallest non-zero quantity; 0 itself is allowed (some venues print it)
MAX_AMOUNT = 1e15
MAX_NOTIONAL = 1e18  # price × amount of one tick

# Tardis-style exchange ids: lower-case letters, digits and '-', e.g. binance-futures.
EXCHANGE_PATTERN = r"[a-z0-9][a-z0-9._-]{0,31}"
_EXCHANGE = re.compile(EXCHANGE_PATTERN)
MAX_SYMBOL_CHARS = 64
MAX_ID_CHARS = 256  # as the ingest workers (ingest.values.MAX_ID_CHARS)


def price_problem(price: float) -> str | None:
    """Why ``price`` (a float already) is not a valid trade price, or None."""
    if not math.isfinite(price):
        return f"price is not finite: {price!r}"
    if price <= 0:
        return f"price must be > 0: {price!r}"
    if not MIN_PRICE <= price <= MAX_PRICE:
        return f"price {price!r} is outside [{MIN_PRICE:g}, {MAX_PRICE:g}]"
    return None


def amount_problem(amount: float, price: float) -> str | None:
    """Why ``amount`` is not a valid base quantity at ``price``, or None."""
    if not math.isfinite(amount):
        return f"amount is not finite: {amount!r}"
    if amount < 0:
        return f"amount must be >= 0: {amount!r}"
    if amount != 0 and not MIN_AMOUNT <= amount <= MAX_AMOUNT:
        return f"amount {amount!r} is outside 0 or [{MIN_AMOUNT:g}, {MAX_AMOUNT:g}]"
    if price * amount > MAX_NOTIONAL:
        return f"notional price × amount = {price * amount:g} exceeds {MAX_NOTIONAL:g}"
    return None


def text_problem(value: Any, name: str, max_chars: int) -> str | None:
    """Why ``value`` cannot be a text field ``name`` (symbol, id, ...), or None."""
    if not isinstance(value, str):
        return f"{name} must be a string: {value!r}"[:200]
    if not 0 < len(value) <= max_chars:
        return f"{name} must have 1 to {max_chars} characters, got {len(value)}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{name} is not valid Unicode (lone surrogate): {value!r}"[:200]
    if not value.isprintable() or value != value.strip():
        return f"{name} has control characters or surrounding spaces: {value!r}"[:200]
    return None


def exchange_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not _EXCHANGE.fullmatch(value):
        return f"exchange must match {EXCHANGE_PATTERN}: {value!r}"[:200]
    return None
