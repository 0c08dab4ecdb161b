"""Venue frames → wire records (SPEC §2): ticks, and error records for what cannot be read.

Python Tardis replays and raw exchange WebSockets both hand us each venue's own JSON; this module
is the one place (with its Node.js twin ``ingest/nodejs/src/normalizers.js``) that knows those
shapes. A ``FeedReader`` reads the frames of ONE feed (it knows its instruments and carries the
state of a stream: synthetic-id counters, whether a BitMEX snapshot is wanted). Frames that are
not trades (acks, heartbeats, other channels) give nothing; a frame, or one trade in it, that
cannot be read gives an error record the pipeline dead-letters, never a silent drop.

Values are converted, not judged: a zero price or a future timestamp still becomes a tick and the
pipeline's validator dead-letters it (one rule set for every source). What cannot be converted at
all (a quantity that is not a number, a time out of range, a lone surrogate in an id) is an
error record with the reason.

Taker side conventions (the ``side`` field is always the TAKER's side):
- Binance ``m`` = "buyer is the maker" → taker sold.
- Coinbase ``match.side`` is the MAKER order's side → taker is the opposite.
- Bybit ``S``, OKX ``side``, Deribit ``direction``, BitMEX ``side`` are the taker's side already.
Quantities become BASE units through the instrument table (``Instrument.base_amount``).
"""
from __future__ import annotations

from typing import Any, Callable

from ingest.gaps import sequence_number
from ingest.message import make_error_record, make_tick
from ingest.values import SyntheticIds, ValueRejected, check_text, load_frame, number, show, time_us, trade_id
from ingest.venues import Contract, Feed, Instrument, load

Record = dict[str, Any]
MISSING = object()
# Text frames that are keepalive replies, not data (OKX and BitMEX answer "ping" with "pong").
KEEPALIVE_TEXT = frozenset({"pong", "ping"})
MAX_SYMBOL_CHARS = 64


# One trade's raw venue values by role (native, id, price, quantity, side, time), each a pair
# (venue key, value or MISSING); side also carries its rule (taker, maker, buyer_is_maker); venue
# is the venue's whole trade object (where a feed's sequence field is read).
Trade = dict[str, tuple]


def _get(record: Any, key: str) -> tuple[str, Any]:
    return key, record.get(key, MISSING) if isinstance(record, dict) else MISSING


def _trade(record: Any, native: str, trade_id_key: str, price: str, quantity: str, side: str, side_rule: str,
           time: str) -> Trade | ValueRejected:
    if not isinstance(record, dict):
        return ValueRejected(f"trade is not an object: {type_name(record)}")
    return {"native": _get(record, native), "id": _get(record, trade_id_key), "price": _get(record, price),
            "quantity": _get(record, quantity), "side": (*_get(record, side), side_rule), "time": _get(record, time),
            "venue": record}


def type_name(value: Any) -> str:
    """JSON's name for a value's type (the same words in both workers)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "unknown")


def _object(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise ValueRejected(f"message is not an object: {type_name(message)}")
    return message


def _items(payload: Any, where: str) -> list[Any]:
    if not isinstance(payload, list):
        raise ValueRejected(f"{where} is not an array: {type_name(payload)}")
    return payload


def read_binance(message: Any, snapshots: bool) -> list[Trade | ValueRejected]:
    """Binance spot ``trade`` and futures ``aggTrade`` events, bare or combined-stream wrapped."""
    message = _object(message)
    if "stream" in message and "data" in message:
        message = message["data"]
        if not isinstance(message, dict):
            raise ValueRejected(f"combined-stream 'data' is not an object: {type_name(message)}")
    if "result" in message and "id" in message:
        return []  # SUBSCRIBE acknowledgement
    if "code" in message and "msg" in message:
        raise ValueRejected(f"exchange error: {show(message['code'])}: {show(message['msg'])}")
    event = message.get("e")
    if event is None:
        raise ValueRejected("message has no event type 'e'")
    if event not in ("trade", "aggTrade"):
        return []
    return [_trade(message, "s", "t" if event == "trade" else "a", "p", "q", "m", "buyer_is_maker", "T")]


_COINBASE_CONTROL = {"subscriptions", "heartbeat", "ticker", "status", "l2update", "snapshot", "received",
                     "open", "done", "change", "activate"}


def read_coinbase(message: Any, snapshots: bool) -> list[Trade | ValueRejected]:
    """Coinbase Exchange ``match``/``last_match``; the message's side is the maker's."""
    message = _object(message)
    kind = message.get("type")
    if kind == "error":
        raise ValueRejected(f"exchange error: {show(message.get('message'))} {show(message.get('reason'))}")
    if kind in ("match", "last_match"):
        return [_trade(message, "product_id", "trade_id", "price", "size", "side", "maker", "time")]
    if isinstance(kind, str) and kind in _COINBASE_CONTROL:
        return []
    raise ValueRejected(f"message has an unknown type: {show(kind)}")


def read_bybit(message: Any, snapshots: bool) -> list[Trade | ValueRejected]:
    """Bybit v5 ``publicTrade.<symbol>`` pushes (many trades per message)."""
    message = _object(message)
    if "op" in message:
        if message.get("success") is False:
            raise ValueRejected(f"request {show(message['op'])} failed: {show(message.get('ret_msg'))}")
        return []  # subscribe / pong acknowledgement
    topic = message.get("topic")
    if not isinstance(topic, str):
        raise ValueRejected("message has no 'topic'")
    if not topic.startswith("publicTrade."):
        return []
    return [_trade(t, "s", "i", "p", "v", "S", "taker", "T") for t in _items(message.get("data"), "'data'")]


def read_okx(message: Any, snapshots: bool) -> list[Trade | ValueRejected]:
    """OKX v5 ``trades``/``trades-all`` channel pushes."""
    message = _object(message)
    event = message.get("event")
    if event == "error":
        raise ValueRejected(f"exchange error {show(message.get('code'))}: {show(message.get('msg'))}")
    if event is not None:
        return []  # subscribe / unsubscribe / notice
    arg = message.get("arg")
    if not isinstance(arg, dict):
        raise ValueRejected("message has no 'arg'")
    if arg.get("channel") not in ("trades", "trades-all"):
        return []
    return [_trade(t, "instId", "tradeId", "px", "sz", "side", "taker", "ts")
            for t in _items(message.get("data"), "'data'")]


def read_deribit(message: Any, snapshots: bool) -> list[Trade | ValueRejected]:
    """Deribit JSON-RPC ``subscription`` notifications on ``trades.<instrument>.<interval>``."""
    message = _object(message)
    if "error" in message:
        error = message["error"]
        raise ValueRejected(f"exchange error: {show(error.get('message') if isinstance(error, dict) else error)}")
    if "result" in message or message.get("method") in ("heartbeat", "public/test"):
        return []  # RPC response or heartbeat
    if message.get("method") != "subscription":
        raise ValueRejected("neither an RPC response nor a subscription notification")
    params = message.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("channel"), str):
        raise ValueRejected("notification has no 'params.channel'")
    if not params["channel"].startswith("trades."):
        return []
    return [_trade(t, "instrument_name", "trade_id", "price", "amount", "direction", "taker", "timestamp")
            for t in _items(params.get("data"), "'params.data'")]


def read_bitmex(message: Any, snapshots: bool) -> list[Trade | ValueRejected]:
    """BitMEX ``trade`` table: ``insert`` rows; ``partial`` rows only when snapshots are wanted."""
    message = _object(message)
    if "error" in message:
        raise ValueRejected(f"exchange error: {show(message['error'])}")
    if "table" not in message:
        if "info" in message or "success" in message or "subscribe" in message:
            return []  # welcome banner / subscription ack
        raise ValueRejected("message has no 'table'")
    action = message.get("action")
    if message["table"] != "trade" or action not in ("partial", "insert") or (action == "partial" and not snapshots):
        return []
    return [_trade(t, "symbol", "trdMatchID", "price", "size", "side", "taker", "timestamp")
            for t in _items(message.get("data"), "'data'")]


VENUE_READERS: dict[str, Callable[[Any, bool], "list[Trade | ValueRejected]"]] = {
    "binance": read_binance,
    "binance-futures": read_binance,
    "coinbase": read_coinbase,
    "bybit": read_bybit,
    "okx": read_okx,
    "deribit": read_deribit,
    "bitmex": read_bitmex,
}


def _side(value: Any, key: str, rule: str) -> str:
    if rule == "buyer_is_maker":
        if not isinstance(value, bool):
            raise ValueRejected(f"'{key}' (buyer is maker) is not a boolean: {show(value)}")
        return "sell" if value else "buy"
    side = value.lower() if isinstance(value, str) else None
    if side not in ("buy", "sell"):
        raise ValueRejected(f"'{key}' is not buy or sell: {show(value)}")
    if rule == "maker":
        return "sell" if side == "buy" else "buy"
    return side


def _present(role: tuple[str, Any]) -> Any:
    key, value = role[0], role[1]
    if value is MISSING or value is None or value == "":
        raise ValueRejected(f"trade has no '{key}'")
    return value


class FeedReader:
    """Reads the frames of one feed of one venue into wire records."""

    def __init__(self, feed: Feed, contract: Contract | None = None) -> None:
        self.feed = feed
        self.exchange = feed.exchange
        self.contract = contract or load()
        self.ids = SyntheticIds()
        self.snapshots = False  # BitMEX partial rows: trades from before the stream (see sources)
        self._instruments: dict[str, Instrument | None] = {}
        self._read = VENUE_READERS[feed.exchange]

    def read(self, frame: str | bytes, local_us: int) -> list[Record]:
        """One WebSocket/Tardis frame → its records ([] for acks, heartbeats, other channels)."""
        return [record for record, _ in self.read_sequenced(frame, local_us)]

    def read_sequenced(self, frame: str | bytes, local_us: int) -> list[tuple[Record, int | None]]:
        """A frame's records, each with its venue sequence number (None for error records and on
        feeds without a sequence): what ``ingest.gaps`` tracks."""
        if isinstance(frame, bytes):
            try:
                frame = frame.decode("utf-8")
            except UnicodeDecodeError:
                return [(self._error("frame is not UTF-8 text", frame, local_us), None)]
        if frame.strip() in KEEPALIVE_TEXT:
            return []
        try:
            message = load_frame(frame)
            trades = self._read(message, self.snapshots)
        except ValueRejected as exc:
            return [(self._error(str(exc), frame, local_us), None)]
        records: list[tuple[Record, int | None]] = []
        sequence_key = self.feed.sequence["field"] if self.feed.sequence else None
        for index, trade in enumerate(trades):
            try:
                if isinstance(trade, ValueRejected):
                    raise trade
                seq = sequence_number(trade["venue"].get(sequence_key)) if sequence_key else None
                records.append((self.tick(trade, local_us), seq))
            except ValueRejected as exc:
                records.append((self._error(f"trade {index}: {exc}", frame, local_us), None))
        return records

    def tick(self, trade: Trade, local_us: int) -> Record:
        key, native = trade["native"][0], _present(trade["native"])
        if not isinstance(native, str):
            raise ValueRejected(f"'{key}' is not a string: {show(native)}")
        instrument = self._instrument(check_text(native, f"'{key}'", MAX_SYMBOL_CHARS))
        price = number(_present(trade["price"]), f"'{trade['price'][0]}'")
        venue_quantity = _present(trade["quantity"])
        quantity_key = f"'{trade['quantity'][0]}'"
        venue_amount = number(venue_quantity, quantity_key)
        try:
            amount = instrument.base_amount(venue_quantity, price)
        except ValueRejected as exc:
            raise ValueRejected(f"{quantity_key}: {exc}") from None
        side_key, side_value, rule = trade["side"]
        side = _side(_present((side_key, side_value)), side_key, rule)
        ts_us = time_us(_present(trade["time"]), f"'{trade['time'][0]}'")
        identifier = trade_id(trade["id"][1] if trade["id"][1] is not MISSING else None, f"'{trade['id'][0]}'")
        if identifier is None:
            identifier = self.ids.next(self.exchange, instrument.native, ts_us, price, venue_amount, side)
        return make_tick(self.exchange, instrument.symbol, instrument.native, identifier, price, amount, side,
                         ts_us, local_us, instrument.kind, venue_amount)

    def _instrument(self, native: str) -> Instrument:
        if native not in self._instruments:
            self._instruments[native] = self.contract.instrument(self.feed, native)
        instrument = self._instruments[native]
        if instrument is None:
            raise ValueRejected(f"{show(native)} is not in instruments.csv for {self.exchange} "
                                f"{self.feed.name}: its contract value is unknown")
        return instrument

    def _error(self, reason: str, raw: str | bytes, local_us: int) -> Record:
        return make_error_record(self.exchange, f"{self.exchange}: {reason}", raw, local_us)
