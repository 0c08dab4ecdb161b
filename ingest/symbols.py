"""Symbols as users write them (BTC-USDT, BTC-USD-PERP) versus each venue's native form.

The mapping itself is the instrument table (``ingest/contract/instruments.csv``, read by
``ingest.venues``); this module keeps the one-call form other packages use.
"""
from __future__ import annotations

from ingest.venues import load, split_native


def to_user_symbol(native: str, exchange: str | None = None) -> str:
    """The user's symbol for a native one. With the exchange (our name, or Tardis.dev's dataset id
    such as ``okex-swap``) the instrument table decides: XBTUSD on bitmex is BTC-USD-PERP. Without
    it, or for a venue the table does not know, the generic split: BTCUSDT → BTC-USDT."""
    if exchange is not None:
        contract = load()
        instrument = contract.instrument_for_tardis(exchange, native)
        if instrument is None and exchange in contract.exchanges:
            for feed in contract.feeds_of(exchange):
                instrument = contract.instrument(feed, native)
                if instrument is not None:
                    break
        if instrument is not None:
            return instrument.symbol
    base, quote, rest = split_native(native)
    return "-".join([base, quote, *rest]) if quote else native.strip().upper()
