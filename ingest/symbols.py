"""Symbols as users write them (BTC-USDT) versus each exchange's native form (BTCUSDT, BTC-USDT-SWAP).

Exchanges name the same market differently; rows keep both so a query by ``symbol`` works across
venues while ``native_symbol`` still matches the exchange's own records.
"""
from __future__ import annotations

# Longest first, so "USDT" wins over "USD" and "FDUSD" over "USD".
_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USD", "EUR", "GBP", "JPY", "TRY", "BRL",
           "BTC", "ETH", "BNB", "XBT", "DAI")


def to_user_symbol(native: str) -> str:
    """BTCUSDT → BTC-USDT, BTC-USDT-SWAP → BTC-USDT, BTC_USDT → BTC-USDT, BTC-PERPETUAL → BTC-PERPETUAL.

    Symbols that already carry a separator keep their first two parts; concatenated ones are split
    at a known quote currency; anything else is returned upper-cased, unchanged.
    """
    text = native.strip().upper().replace("_", "-").replace("/", "-")
    if "-" in text:
        parts = text.split("-")
        if parts[-1] in ("SWAP", "PERP") and len(parts) >= 3:
            return f"{parts[0]}-{parts[1]}"
        return text
    for quote in _QUOTES:
        # A base of at least 3 letters: XBTUSD is XBT-USD, not XB-TUSD.
        if text.endswith(quote) and len(text) - len(quote) >= 3:
            return f"{text[:-len(quote)]}-{quote}"
    return text


def to_native_symbol(exchange: str, user_symbol: str) -> str:
    """BTC-USDT → the form the exchange's public API expects for its trade stream."""
    base, _, quote = user_symbol.upper().partition("-")
    if not quote:
        return user_symbol.upper()
    if exchange in ("coinbase",):
        return f"{base}-{quote}"
    if exchange in ("okex", "okx"):
        return f"{base}-{quote}"
    if exchange in ("okex-swap", "okx-swap"):
        return f"{base}-{quote}-SWAP"
    if exchange == "deribit":
        return f"{base}-PERPETUAL" if quote == "USD" else f"{base}_{quote}-PERPETUAL"
    return f"{base}{quote}"
