"""Exchange-native trade messages → wire-format ticks (SPEC §2).

Python Tardis clients and raw exchange WebSockets both hand us each venue's own JSON; this module is
the one place that knows those shapes. Each normalizer takes one decoded message and returns the
ticks it carries: an empty list for messages that are not trades (subscription acks, heartbeats,
other channels), and raises ``MalformedMessage`` for anything that claims to be a trade but cannot
be read, so callers count it and log it instead of dropping it silently.

Values are converted, not judged: a zero price or a future timestamp still becomes a tick, and the
pipeline's validator dead-letters it with the reason (one rule set for every source).

Taker side conventions (the ``side`` field is always the TAKER's side):
- Binance ``m`` = "buyer is the maker" → taker sold.
- Coinbase ``match.side`` is the MAKER order's side → taker is the opposite.
- Bybit ``S``, OKX ``side``, Deribit ``direction``, BitMEX ``side`` are the taker's side already.
Amounts are what the exchange reports (contracts/USD for inverse perpetuals such as BitMEX XBTUSD
and Deribit BTC-PERPETUAL), the same convention as Tardis.dev's normalized ``trades`` data.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from ingest.message import make_tick, parse_time_us
from ingest.symbols import to_user_symbol

Tick = dict[str, Any]


class MalformedMessage(ValueError):
    """A message that should carry trades but cannot be read; the reason is in the text."""


def _require(record: Mapping[str, Any], key: str, exchange: str) -> Any:
    if not isinstance(record, Mapping):
        raise MalformedMessage(f"{exchange}: trade entry is {type(record).__name__}, not an object")
    value = record.get(key)
    if value is None or value == "":
        raise MalformedMessage(f"{exchange}: trade has no '{key}'")
    return value


def _number(value: Any, key: str, exchange: str) -> float:
    if isinstance(value, bool):
        raise MalformedMessage(f"{exchange}: '{key}' is a boolean")
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"{exchange}: '{key}' is not a number: {value!r}") from exc


def _time_us(value: Any, key: str, exchange: str) -> int:
    try:
        return parse_time_us(value)
    except ValueError as exc:
        raise MalformedMessage(f"{exchange}: '{key}': {exc}") from exc


def _side(value: Any, mapping: Mapping[Any, str], key: str, exchange: str) -> str:
    if isinstance(value, str):
        value = value.lower()
    if value not in mapping:
        raise MalformedMessage(f"{exchange}: '{key}' is not a known side: {value!r}")
    return mapping[value]


def _ms_us(value: Any, key: str, exchange: str) -> int:
    """Epoch milliseconds (number or digit string) → µs; these venues document ms explicitly."""
    if isinstance(value, bool):
        raise MalformedMessage(f"{exchange}: '{key}' is a boolean")
    try:
        return int(value) * 1_000
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"{exchange}: '{key}' is not epoch milliseconds: {value!r}") from exc


def _tick(exchange: str, native: str, trade_id: Any, price: float, amount: float, side: str,
          ts_us: int, local_ts_us: int, user_symbol: str | None = None) -> Tick:
    return make_tick(exchange, user_symbol or to_user_symbol(native), native, str(trade_id), price, amount,
                     side, ts_us, local_ts_us)


def _bitmex_user_symbol(native: str) -> str:
    """XBTUSD → BTC-USD: BitMEX's XBT is bitcoin, and the user writes BTC."""
    return to_user_symbol("BTC" + native[3:] if native.startswith("XBT") else native)


def _items(payload: Any, exchange: str) -> list[Any]:
    if not isinstance(payload, list):
        raise MalformedMessage(f"{exchange}: trade 'data' is {type(payload).__name__}, not a list")
    return payload


_TAKER = {"buy": "buy", "sell": "sell"}


def normalize_binance(exchange: str, message: Any, local_ts_us: int) -> list[Tick]:
    """Binance spot/futures ``trade`` and ``aggTrade`` events, bare or combined-stream wrapped."""
    if not isinstance(message, dict):
        raise MalformedMessage(f"{exchange}: message is {type(message).__name__}, not an object")
    if "stream" in message and "data" in message:
        message = message["data"]
        if not isinstance(message, dict):
            raise MalformedMessage(f"{exchange}: combined-stream 'data' is not an object")
    if "result" in message and "id" in message:
        return []  # SUBSCRIBE/UNSUBSCRIBE acknowledgement
    if "code" in message and "msg" in message:
        raise MalformedMessage(f"{exchange}: exchange error {message['code']}: {message['msg']}")
    event = message.get("e")
    if event is None:
        raise MalformedMessage(f"{exchange}: message has no event type 'e'")
    if event not in ("trade", "aggTrade"):
        return []
    id_key = "t" if event == "trade" else "a"
    buyer_is_maker = message.get("m")
    if not isinstance(buyer_is_maker, bool):
        raise MalformedMessage(f"{exchange}: 'm' (buyer is maker) is not a boolean: {buyer_is_maker!r}")
    native = str(_require(message, "s", exchange))
    return [_tick(exchange, native, _require(message, id_key, exchange),
                  _number(_require(message, "p", exchange), "p", exchange),
                  _number(_require(message, "q", exchange), "q", exchange),
                  "sell" if buyer_is_maker else "buy",
                  _ms_us(_require(message, "T", exchange), "T", exchange), local_ts_us)]


_COINBASE_CONTROL = {"subscriptions", "heartbeat", "ticker", "status", "l2update", "snapshot",
                     "received", "open", "done", "change", "activate"}


def normalize_coinbase(exchange: str, message: Any, local_ts_us: int) -> list[Tick]:
    """Coinbase Exchange ``match``/``last_match``; the message's side is the maker's."""
    if not isinstance(message, dict):
        raise MalformedMessage(f"{exchange}: message is {type(message).__name__}, not an object")
    kind = message.get("type")
    if kind is None:
        raise MalformedMessage(f"{exchange}: message has no 'type'")
    if kind == "error":
        raise MalformedMessage(f"{exchange}: exchange error: {message.get('message')} {message.get('reason', '')}")
    if kind not in ("match", "last_match"):
        return []
    maker_side = _side(_require(message, "side", exchange), _TAKER, "side", exchange)
    return [_tick(exchange, str(_require(message, "product_id", exchange)),
                  _require(message, "trade_id", exchange),
                  _number(_require(message, "price", exchange), "price", exchange),
                  _number(_require(message, "size", exchange), "size", exchange),
                  "sell" if maker_side == "buy" else "buy",
                  _time_us(_require(message, "time", exchange), "time", exchange), local_ts_us)]


def normalize_bybit(exchange: str, message: Any, local_ts_us: int) -> list[Tick]:
    """Bybit v5 ``publicTrade.<symbol>`` pushes (up to 1024 trades per message)."""
    if not isinstance(message, dict):
        raise MalformedMessage(f"{exchange}: message is {type(message).__name__}, not an object")
    if "op" in message:
        if message.get("success") is False:
            raise MalformedMessage(f"{exchange}: request '{message['op']}' failed: {message.get('ret_msg')}")
        return []  # subscribe / ping acknowledgement
    topic = message.get("topic")
    if not isinstance(topic, str):
        raise MalformedMessage(f"{exchange}: message has no 'topic'")
    if not topic.startswith("publicTrade."):
        return []
    ticks = []
    for trade in _items(message.get("data"), exchange):
        ticks.append(_tick(exchange, str(_require(trade, "s", exchange)), _require(trade, "i", exchange),
                           _number(_require(trade, "p", exchange), "p", exchange),
                           _number(_require(trade, "v", exchange), "v", exchange),
                           _side(_require(trade, "S", exchange), _TAKER, "S", exchange),
                           _ms_us(_require(trade, "T", exchange), "T", exchange), local_ts_us))
    return ticks


def normalize_okx(exchange: str, message: Any, local_ts_us: int) -> list[Tick]:
    """OKX v5 public ``trades`` channel pushes."""
    if not isinstance(message, dict):
        raise MalformedMessage(f"{exchange}: message is {type(message).__name__}, not an object")
    event = message.get("event")
    if event == "error":
        raise MalformedMessage(f"{exchange}: exchange error {message.get('code')}: {message.get('msg')}")
    if event is not None:
        return []  # subscribe / unsubscribe / notice
    arg = message.get("arg")
    if not isinstance(arg, dict):
        raise MalformedMessage(f"{exchange}: message has no 'arg'")
    if arg.get("channel") not in ("trades", "trades-all"):
        return []
    ticks = []
    for trade in _items(message.get("data"), exchange):
        ticks.append(_tick(exchange, str(_require(trade, "instId", exchange)),
                           _require(trade, "tradeId", exchange),
                           _number(_require(trade, "px", exchange), "px", exchange),
                           _number(_require(trade, "sz", exchange), "sz", exchange),
                           _side(_require(trade, "side", exchange), _TAKER, "side", exchange),
                           _ms_us(_require(trade, "ts", exchange), "ts", exchange), local_ts_us))
    return ticks


def normalize_deribit(exchange: str, message: Any, local_ts_us: int) -> list[Tick]:
    """Deribit JSON-RPC ``subscription`` notifications on ``trades.<instrument>.<interval>``."""
    if not isinstance(message, dict):
        raise MalformedMessage(f"{exchange}: message is {type(message).__name__}, not an object")
    if "error" in message:
        error = message["error"]
        raise MalformedMessage(f"{exchange}: exchange error: {error.get('message') if isinstance(error, dict) else error}")
    if "result" in message or message.get("method") in ("heartbeat", "public/test"):
        return []  # RPC response or heartbeat
    if message.get("method") != "subscription":
        raise MalformedMessage(f"{exchange}: neither an RPC response nor a subscription notification")
    params = message.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("channel"), str):
        raise MalformedMessage(f"{exchange}: notification has no 'params.channel'")
    if not params["channel"].startswith("trades."):
        return []
    ticks = []
    for trade in _items(params.get("data"), exchange):
        ticks.append(_tick(exchange, str(_require(trade, "instrument_name", exchange)),
                           _require(trade, "trade_id", exchange),
                           _number(_require(trade, "price", exchange), "price", exchange),
                           _number(_require(trade, "amount", exchange), "amount", exchange),
                           _side(_require(trade, "direction", exchange), _TAKER, "direction", exchange),
                           _ms_us(_require(trade, "timestamp", exchange), "timestamp", exchange),
                           local_ts_us))
    return ticks


def normalize_bitmex(exchange: str, message: Any, local_ts_us: int) -> list[Tick]:
    """BitMEX ``trade`` table (``partial`` snapshot and ``insert`` updates)."""
    if not isinstance(message, dict):
        raise MalformedMessage(f"{exchange}: message is {type(message).__name__}, not an object")
    if "error" in message:
        raise MalformedMessage(f"{exchange}: exchange error: {message['error']}")
    if "table" not in message:
        if "info" in message or "success" in message or "subscribe" in message:
            return []  # welcome banner / subscription ack
        raise MalformedMessage(f"{exchange}: message has no 'table'")
    if message["table"] != "trade" or message.get("action") not in ("partial", "insert"):
        return []
    ticks = []
    for trade in _items(message.get("data"), exchange):
        native = str(_require(trade, "symbol", exchange))
        ticks.append(_tick(exchange, native, _require(trade, "trdMatchID", exchange),
                           _number(_require(trade, "price", exchange), "price", exchange),
                           _number(_require(trade, "size", exchange), "size", exchange),
                           _side(_require(trade, "side", exchange), _TAKER, "side", exchange),
                           _time_us(_require(trade, "timestamp", exchange), "timestamp", exchange),
                           local_ts_us, _bitmex_user_symbol(native)))
    return ticks


Normalizer = Callable[[str, Any, int], "list[Tick]"]

NORMALIZERS: dict[str, Normalizer] = {
    "binance": normalize_binance,
    "binance-futures": normalize_binance,
    "coinbase": normalize_coinbase,
    "bybit": normalize_bybit,
    "okx": normalize_okx,
    "deribit": normalize_deribit,
    "bitmex": normalize_bitmex,
}


def normalize(exchange: str, message: Any, local_ts_us: int) -> list[Tick]:
    """The ticks in one decoded exchange message ([] for non-trade messages).

    Raises MalformedMessage for unreadable trade messages, ValueError for an exchange this module
    does not know.
    """
    normalizer = NORMALIZERS.get(exchange)
    if normalizer is None:
        raise ValueError(f"no normalizer for exchange {exchange!r}; known: {', '.join(sorted(NORMALIZERS))}")
    return normalizer(exchange, message, local_ts_us)
