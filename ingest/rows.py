"""Rows of trade files → wire records: Tardis and Binance CSV rows, JSONL lines.

The rules both workers share (the Node.js twin: ``src/sources/file.js``): one CSV split (RFC 4180
quotes, no newline inside a field), cells that are not strict numbers kept as text for the
pipeline to dead-letter, derivatives' quantities in base units, deterministic ids for rows without
one, and JSONL records republished with the wire fields in wire order (5.0 and 5 are one JSON number
to JavaScript, so float fields always get floats and the others integers), their ``fills`` marks and
the messages' ``missing`` ranges kept (checked by ``ingest.gaps``).
"""
from __future__ import annotations

import functools
import math
import re
import time
from typing import Any

from ingest.gaps import canonical_fills, missing_from_entry
from ingest.message import (BATCH_KEY, DISCONNECTS_KEY, ERROR_SYMBOL, FIELD_AMOUNT, FIELD_ERROR, FIELD_EXCHANGE,
                            FIELD_FILLS, FIELD_INSTRUMENT_KIND, FIELD_SYMBOL, FIELD_TIMESTAMP, FIELD_VENUE_AMOUNT,
                            MISSING_KEY, make_error_record, make_tick)
from ingest.values import SAFE_INTEGER, SyntheticIds, ValueRejected, load_frame, number, show, time_us
from ingest.venues import Instrument, load, split_native

TARDIS_HEADER = ["exchange", "symbol", "timestamp", "local_timestamp", "id", "side", "price", "amount"]
_INTEGER = re.compile(r"-?[0-9]+")
# Wire fields a JSONL record may carry, in wire order; floats are written as floats in them.
RECORD_FIELDS = ("exchange", "symbol", "nativeSymbol", "id", "price", "amount", "side", "timestamp",
                 "localTimestamp", FIELD_INSTRUMENT_KIND, FIELD_VENUE_AMOUNT, FIELD_ERROR, "_raw")
FLOAT_FIELDS = frozenset({"price", FIELD_AMOUNT, FIELD_VENUE_AMOUNT})
MARKER_FIELDS = (FIELD_EXCHANGE, FIELD_SYMBOL, FIELD_TIMESTAMP)


def split_csv_line(line: str) -> list[str]:
    """One CSV record: RFC 4180 quotes ("" inside quotes is a quote), no newline inside a field;
    a trailing CR is dropped, an empty line has no cells."""
    text = line[:-1] if line.endswith("\r") else line
    if '"' not in text:
        return text.split(",") if text else []
    cells, cell, quoted, i = [], [], False, 0
    while i < len(text):
        char = text[i]
        if quoted:
            if char == '"' and text[i + 1:i + 2] == '"':
                cell.append('"')
                i += 1
            elif char == '"':
                quoted = False
            else:
                cell.append(char)
        elif char == '"' and not cell:
            quoted = True
        elif char == ",":
            cells.append("".join(cell))
            cell = []
        else:
            cell.append(char)
        i += 1
    cells.append("".join(cell))
    return cells


def cell_number(text: str) -> Any:
    """A CSV cell as a float when it is a finite decimal, else the text (the parser rejects it)."""
    try:
        return number(text, "cell")
    except ValueRejected:
        return text


def cell_integer(text: str) -> Any:
    """A CSV cell as an integer when it is one, else the text."""
    return int(text) if _INTEGER.fullmatch(text) else text


def _now_us() -> int:
    return time.time_ns() // 1_000


@functools.lru_cache(maxsize=4096)
def tardis_market(source: str, native: str) -> tuple[str, Instrument | None, bool]:
    """(our exchange name, the instrument, whether the venue is ours) of a Tardis CSV row's
    ``exchange`` and ``symbol`` cells: the pipeline's file reader and the workers ask the same."""
    contract = load()
    feeds = contract.feeds_for_tardis(source)
    instrument = contract.instrument_for_tardis(source, native) if feeds else None
    return (feeds[0].exchange if feeds else source, instrument, bool(feeds))


def tardis_symbol(source: str, native: str) -> str | None:
    """The user symbol of a Tardis CSV market whose rows need no conversion (spot, or a venue we
    do not list), else None: its rows go through ``CsvRows`` one by one."""
    _, instrument, known = tardis_market(source, native)
    if instrument is None:
        return None if known else _generic_symbol(native)
    return instrument.symbol if instrument.kind == "spot" else None


def synthetic_id(rows: "CsvRows", source: str, native: str, ts: str, price: str, quantity: str,
                 side: str) -> str | None:
    """The id ``CsvRows.tardis`` gives a row without one (None when its cells cannot make one:
    that row is then refused with the reason by ``CsvRows.tardis``)."""
    exchange, _, _ = tardis_market(source, native)
    try:
        return rows.ids.next(exchange, native, time_us(cell_integer(ts), "timestamp"),
                             number(price, "price"), number(quantity, "amount"), side)
    except ValueRejected:
        return None


class CsvRows:
    """CSV rows of one file → records; synthetic ids count per file."""

    def __init__(self) -> None:
        self.contract = load()
        self.ids = SyntheticIds()

    def _market(self, source: str, native: str) -> tuple[str, Instrument | None, bool]:
        return tardis_market(source, native)

    def tardis(self, row: list[str], raw: str) -> dict[str, Any]:
        if len(row) != len(TARDIS_HEADER):
            return make_error_record(ERROR_SYMBOL, f"expected {len(TARDIS_HEADER)} columns, got {len(row)}", raw,
                                     _now_us())
        source, native, ts, local_ts, trade_id, side, price, amount = row
        exchange, instrument, known = self._market(source, native)
        if known and instrument is None:
            return make_error_record(exchange, f"{exchange}: {show(native)} is not in instruments.csv for Tardis "
                                               f"{source}: its contract value is unknown", raw, _now_us())
        return self._tick(exchange, instrument, native, cell_integer(ts), cell_integer(local_ts), trade_id, side,
                          price, amount, raw)

    def binance(self, row: list[str], native: str, raw: str) -> dict[str, Any]:
        if len(row) < 6:
            return make_error_record("binance", f"expected 7 columns, got {len(row)}", raw, _now_us())
        trade_id, price, qty, _quote_qty, time_raw, buyer_is_maker = row[:6]
        maker = buyer_is_maker.strip().lower()
        if maker not in ("true", "false"):
            return make_error_record("binance", f"binance: is_buyer_maker is not True or False: {show(buyer_is_maker)}",
                                     raw, _now_us())
        try:  # ms until 2024, µs since 2025: the unit is detected per value
            ts: Any = time_us(time_raw) if _INTEGER.fullmatch(time_raw) else time_raw
        except ValueRejected:
            ts = time_raw
        instrument = self.contract.instrument(self.contract.feeds[("binance", "spot")], native)
        return self._tick("binance", instrument, native, ts, ts, trade_id, "sell" if maker == "true" else "buy",
                          price, qty, raw)

    def _tick(self, exchange: str, instrument: Instrument | None, native: str, ts: Any, local_ts: Any,
              trade_id: str, side: str, price_text: str, quantity_text: str, raw: str) -> dict[str, Any]:
        price, quantity = cell_number(price_text), cell_number(quantity_text)
        amount: Any = quantity
        kind = instrument.kind if instrument is not None else "spot"
        try:
            if kind != "spot" and isinstance(price, float) and isinstance(quantity, float):
                amount = instrument.base_amount(quantity_text, price)  # type: ignore[union-attr]
            if trade_id == "":
                trade_id = self.ids.next(exchange, native, time_us(ts, "timestamp"),
                                         number(price_text, "price"), number(quantity_text, "amount"), side)
        except ValueRejected as exc:
            reason = str(exc) if trade_id else f"no trade id, and {exc}"
            return make_error_record(exchange, f"{exchange}: {reason}", raw, _now_us())
        symbol = instrument.symbol if instrument is not None else _generic_symbol(native)
        tick = make_tick(exchange, symbol, native, trade_id, 0.0, 0.0, side, 0, 0, kind, 0.0)
        tick.update(price=price, amount=amount, timestamp=ts, localTimestamp=local_ts)
        if kind != "spot":
            tick[FIELD_VENUE_AMOUNT] = quantity
        return tick


def _generic_symbol(native: str) -> str:
    base, quote, rest = split_native(native)
    return "-".join([base, quote, *rest]) if quote else native.upper()


def _canonical_scalar(key: str, value: Any) -> Any:
    """A JSONL field value as both workers write it: 5.0 and 5 are one number to JavaScript, so
    the wire's float fields always get a float and the others an integer when it is one."""
    if isinstance(value, (dict, list)):
        raise ValueRejected(f"field {show(key)} is not a scalar")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueRejected(f"field {show(key)} is not finite")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if key in FLOAT_FIELDS:
        return float(value)
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) <= SAFE_INTEGER else value


def canonical_record(record: Any) -> dict[str, Any]:
    """A JSONL tick as both workers republish it: the wire fields in wire order, others left out."""
    if not isinstance(record, dict):
        raise ValueRejected("tick is not an object")
    canonical = {key: _canonical_scalar(key, record[key]) for key in RECORD_FIELDS if key in record}
    if FIELD_FILLS in record:
        canonical[FIELD_FILLS] = canonical_fills(record[FIELD_FILLS])
    return canonical


def _canonical_marker(marker: Any) -> dict[str, Any]:
    if not isinstance(marker, dict) or not all(isinstance(marker.get(k), str) for k in MARKER_FIELDS[:2]) \
            or marker.get(FIELD_TIMESTAMP) is None:
        raise ValueRejected("bad disconnect marker")
    return {key: _canonical_scalar(key, marker[key]) for key in MARKER_FIELDS}


def jsonl_items(line: str) -> list[Any]:
    """One JSONL line → records, then ``Disconnect`` markers, then ``Missing`` ranges."""
    from ingest.streams import Disconnect

    def error(reason: str) -> dict[str, Any]:
        return make_error_record(ERROR_SYMBOL, reason, line, _now_us())

    try:
        message = load_frame(line)
    except ValueRejected as exc:
        return [error(str(exc).replace("frame", "line"))]
    if not isinstance(message, dict):
        return [error("line is not a JSON object")]
    records, markers = (message[BATCH_KEY], message.get(DISCONNECTS_KEY) or []) if BATCH_KEY in message \
        else ([message], [])
    if not isinstance(records, list) or not isinstance(markers, list):
        return [error("ticks/disconnects must be arrays")]
    items: list[Any] = []
    for record in records:
        try:
            items.append(canonical_record(record))
        except ValueRejected as exc:
            items.append(error(str(exc)))
    for marker in markers:
        try:
            canonical = _canonical_marker(marker)
            ts_us = time_us(canonical[FIELD_TIMESTAMP], "marker timestamp")
            items.append(Disconnect(canonical[FIELD_EXCHANGE], canonical[FIELD_SYMBOL], ts_us))
        except ValueRejected as exc:
            items.append(error(str(exc)))
    ranges = (message.get(MISSING_KEY) or []) if BATCH_KEY in message else []
    if not isinstance(ranges, list):
        return items + [error("missing must be an array")]
    for entry in ranges:
        try:
            items.append(missing_from_entry(entry))
        except ValueRejected as exc:
            items.append(error(str(exc)))
    return items
