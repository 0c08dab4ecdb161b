"""Where each supported exchange's trades come from: its Tardis.dev replay id and channel, and its
public WebSocket trade stream (URL and subscribe request).

Kept apart from the normalizers (which only read messages) so adding a venue is one entry here plus
one normalizer. Live URLs are the exchanges' documented public endpoints; tests override them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Sequence

from ingest.symbols import to_native_symbol


@dataclass(frozen=True)
class ExchangeSpec:
    """How to reach one exchange's trade feed."""

    name: str
    tardis_id: str  # exchange id in Tardis.dev's replay API
    tardis_channel: str  # the trade channel's name in Tardis.dev filters
    ws_url: str
    subscribe: Callable[[Sequence[str]], list[str]]  # native symbols -> subscribe frames to send
    native_symbol: Callable[[str], str]  # user symbol (BTC-USDT) -> the exchange's form

    def native_symbols(self, user_symbols: Sequence[str]) -> list[str]:
        return [self.native_symbol(symbol) for symbol in user_symbols]


def _binance_subscribe(stream: str) -> Callable[[Sequence[str]], list[str]]:
    def frames(natives: Sequence[str]) -> list[str]:
        params = [f"{native.lower()}@{stream}" for native in natives]
        return [json.dumps({"method": "SUBSCRIBE", "params": params, "id": 1})]
    return frames


def _coinbase_subscribe(natives: Sequence[str]) -> list[str]:
    return [json.dumps({"type": "subscribe", "product_ids": list(natives), "channels": ["matches"]})]


def _bybit_subscribe(natives: Sequence[str]) -> list[str]:
    return [json.dumps({"op": "subscribe", "args": [f"publicTrade.{native}" for native in natives]})]


def _okx_subscribe(natives: Sequence[str]) -> list[str]:
    args = [{"channel": "trades", "instId": native} for native in natives]
    return [json.dumps({"op": "subscribe", "args": args})]


def _deribit_subscribe(natives: Sequence[str]) -> list[str]:
    # "raw" needs an authorised connection; "100ms" is the public, unauthenticated interval.
    channels = [f"trades.{native}.100ms" for native in natives]
    return [json.dumps({"jsonrpc": "2.0", "id": 1, "method": "public/subscribe",
                        "params": {"channels": channels}})]


def _bitmex_subscribe(natives: Sequence[str]) -> list[str]:
    return [json.dumps({"op": "subscribe", "args": [f"trade:{native}" for native in natives]})]


def _bitmex_native(user_symbol: str) -> str:
    """BitMEX calls bitcoin XBT: BTC-USD → XBTUSD."""
    native = to_native_symbol("bitmex", user_symbol)
    return "XBT" + native[3:] if native.startswith("BTC") else native


def _native_for(exchange: str) -> Callable[[str], str]:
    return lambda user_symbol: to_native_symbol(exchange, user_symbol)


EXCHANGES: dict[str, ExchangeSpec] = {
    spec.name: spec for spec in (
        ExchangeSpec("binance", "binance", "trade", "wss://stream.binance.com:9443/ws",
                     _binance_subscribe("trade"), _native_for("binance")),
        # Futures: aggTrade is the documented public trade stream on fstream.
        ExchangeSpec("binance-futures", "binance-futures", "aggTrade", "wss://fstream.binance.com/ws",
                     _binance_subscribe("aggTrade"), _native_for("binance-futures")),
        ExchangeSpec("coinbase", "coinbase", "match", "wss://ws-feed.exchange.coinbase.com",
                     _coinbase_subscribe, _native_for("coinbase")),
        ExchangeSpec("bybit", "bybit", "publicTrade", "wss://stream.bybit.com/v5/public/linear",
                     _bybit_subscribe, _native_for("bybit")),
        ExchangeSpec("okx", "okex", "trades", "wss://ws.okx.com:8443/ws/v5/public",
                     _okx_subscribe, _native_for("okx")),
        ExchangeSpec("deribit", "deribit", "trades", "wss://www.deribit.com/ws/api/v2",
                     _deribit_subscribe, _native_for("deribit")),
        ExchangeSpec("bitmex", "bitmex", "trade", "wss://ws.bitmex.com/realtime",
                     _bitmex_subscribe, _bitmex_native),
    )
}


def exchange_spec(name: str) -> ExchangeSpec:
    try:
        return EXCHANGES[name]
    except KeyError:
        raise ValueError(f"unsupported exchange {name!r}; supported: {', '.join(EXCHANGES)}") from None
