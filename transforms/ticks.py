"""Ticks: parse and validate messages (SPEC §2) into tick batches (``transforms.tick_batch``)."""
from __future__ import annotations

import json
import time
from typing import Any, Iterator, Mapping, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from ingest import message as wire
from transforms import tick_rules as rules
from transforms.dead_letter import DEAD_LETTER_TAG, dead_letter, dead_letter_on_error
from transforms.missing_ranges import (MAX_RANGES_PER_MESSAGE, MissingRange, fill_columns, fill_of,
                                       missing_range)
from transforms.tick_batch import BUCKET_US, SIDE_CODES, MarketKey, TickBatch

STAGE_PARSE = "parse"


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name} is not a number: {value!r}"[:200])
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        raise ValueError(f"{name} is out of range: {str(value)[:40]}") from None


def _validate_tick(tick: Any, min_ts_us: int | None, max_ts_us: int) -> tuple:
    """One tick dict → (exchange, symbol, native, id, ts, local_ts, price, amount, side, fill);
    raises ValueError with the reason for anything the rules (``transforms.tick_rules``) refuse."""
    if not isinstance(tick, dict):
        raise ValueError(f"tick is not an object: {type(tick).__name__}")
    if "_error" in tick:
        raise ValueError(str(tick["_error"]))
    missing = [name for name in wire.REQUIRED_FIELDS if tick.get(name) in (None, "")]
    if missing:
        raise ValueError(f"missing field(s): {', '.join(missing)}")
    exchange, symbol, trade_id = tick[wire.FIELD_EXCHANGE], tick[wire.FIELD_SYMBOL], tick[wire.FIELD_ID]
    if not isinstance(exchange, str) or not isinstance(symbol, str):
        raise ValueError("exchange and symbol must be strings")
    if isinstance(trade_id, int) and not isinstance(trade_id, bool):
        trade_id = str(trade_id)
    native = tick.get(wire.FIELD_NATIVE_SYMBOL) or symbol
    problem = (rules.exchange_problem(exchange)
               or rules.text_problem(symbol, "symbol", rules.MAX_SYMBOL_CHARS)
               or rules.text_problem(native, "nativeSymbol", rules.MAX_SYMBOL_CHARS)
               or rules.text_problem(trade_id, "id", rules.MAX_ID_CHARS))
    price = _number(tick[wire.FIELD_PRICE], "price")
    amount = _number(tick[wire.FIELD_AMOUNT], "amount")
    problem = problem or rules.price_problem(price) or rules.amount_problem(amount, price)
    if problem:
        raise ValueError(problem)
    side = tick.get(wire.FIELD_SIDE) or "unknown"
    if not isinstance(side, str) or side not in SIDE_CODES:
        raise ValueError(f"side must be buy, sell or unknown: {side!r}"[:200])
    ts_us = wire.parse_time_us(tick[wire.FIELD_TIMESTAMP])
    if ts_us > max_ts_us:
        raise ValueError("timestamp is too far in the future")
    if ts_us < 0:
        raise ValueError("timestamp is before 1970")
    if min_ts_us is not None and ts_us < min_ts_us:
        raise ValueError("timestamp is earlier than the message's ts attribute")
    local = tick.get(wire.FIELD_LOCAL_TIMESTAMP)
    local_us = wire.parse_time_us(local) if local not in (None, "") else ts_us
    if not 0 <= local_us <= max_ts_us:
        raise ValueError("localTimestamp is before 1970 or too far in the future")
    fill = fill_of(tick.get(wire.FIELD_FILLS), max_ts_us)
    return exchange, symbol, native, trade_id, ts_us, local_us, price, amount, SIDE_CODES[side], fill


def _message_problem(attributes: Mapping[str, str]) -> tuple[str | None, int | None]:
    """(why the whole message is refused, its ``ts`` in µs) from its attributes."""
    if wire.ATTR_BAD_EVENT_TIME in attributes:  # the event-time guard replaced a bad ts
        return f"bad ts attribute {attributes[wire.ATTR_BAD_EVENT_TIME]!r}"[:300], None
    raw = attributes.get(wire.ATTR_EVENT_TIME)
    if raw in (None, ""):
        return None, None
    ms = wire.event_time_ms(raw)
    if ms is None:
        return f"bad ts attribute {raw!r}"[:300], None
    return None, ms * 1000


def parse_records(records: Sequence[Any], attributes: Mapping[str, str] | None = None,
                  publish_time_us: int = 0, max_future_us: int = 86_400_000_000,
                  disconnects: Sequence[Any] = (), now_us: int | None = None,
                  missing: Sequence[Any] = ()) -> tuple[list[TickBatch], list[dict[str, Any]]]:
    """Validate tick dicts; group the good ones into TickBatches per (exchange, symbol, bucket),
    with the disconnect markers and missing ranges of the message (a range goes with the bucket
    of its span's end, where the worker found it).

    Returns (batches, dead-letter rows). The ``ts`` attribute, when present, must not be later
    than any tick: it is the element's timestamp, and Beam cannot move an element before it.
    """
    now_us = int(time.time() * 1e6) if now_us is None else now_us
    max_ts_us = now_us + max_future_us
    attributes = attributes or {}
    refused, min_ts_us = _message_problem(attributes)
    if refused:
        return [], [dead_letter(STAGE_PARSE, refused, tick, attributes) for tick in records] or \
            [dead_letter(STAGE_PARSE, refused, records, attributes)]
    groups: dict[tuple[str, str, int], list[tuple]] = {}
    natives: dict[tuple[str, str], str] = {}
    markers: dict[tuple[str, str, int], list[int]] = {}
    ranges: dict[tuple[str, str, int], list[MissingRange]] = {}
    dead: list[dict[str, Any]] = []
    for tick in records:
        try:
            exchange, symbol, native, *row = _validate_tick(tick, min_ts_us, max_ts_us)
        except (ValueError, TypeError, OverflowError) as exc:
            dead.append(dead_letter(STAGE_PARSE, str(exc), tick, attributes))
            continue
        natives.setdefault((exchange, symbol), native)
        groups.setdefault((exchange, symbol, row[1] // BUCKET_US), []).append(tuple(row))
    for marker in disconnects:
        try:
            if not isinstance(marker, dict):
                raise ValueError("a disconnect marker must be an object")
            ts_us = wire.parse_time_us(marker[wire.FIELD_TIMESTAMP])
            exchange, symbol = marker[wire.FIELD_EXCHANGE], marker[wire.FIELD_SYMBOL]
            problem = (rules.exchange_problem(exchange)
                       or rules.text_problem(symbol, "symbol", rules.MAX_SYMBOL_CHARS))
            if problem or not 0 <= ts_us <= max_ts_us:
                raise ValueError(problem or "timestamp out of range")
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            dead.append(dead_letter(STAGE_PARSE, f"bad disconnect marker: {exc}", marker, attributes))
            continue
        markers.setdefault((exchange, symbol, ts_us // BUCKET_US), []).append(ts_us)
        natives.setdefault((exchange, symbol), symbol)
    if len(missing) > MAX_RANGES_PER_MESSAGE:
        dead.append(dead_letter(STAGE_PARSE, f"{len(missing) - MAX_RANGES_PER_MESSAGE} missing ranges over "
                                f"the limit of {MAX_RANGES_PER_MESSAGE} per message",
                                list(missing[MAX_RANGES_PER_MESSAGE:]), attributes))
        missing = missing[:MAX_RANGES_PER_MESSAGE]
    for entry in missing:
        try:
            exchange, symbol, reported = missing_range(entry, max_ts_us)
        except ValueError as exc:
            dead.append(dead_letter(STAGE_PARSE, str(exc), entry, attributes))
            continue
        ranges.setdefault((exchange, symbol, reported[1] // BUCKET_US), []).append(reported)
        natives.setdefault((exchange, symbol), symbol)
    return [_batch(key, groups.get(key, []), natives[key[:2]], publish_time_us, markers.get(key, ()),
                   ranges.get(key, ()))
            for key in dict.fromkeys([*groups, *markers, *ranges])], dead


def _batch(key: tuple[str, str, int], rows: list[tuple], native: str, publish_time_us: int,
           marker_us: Sequence[int], missing: Sequence[MissingRange]) -> TickBatch:
    """One bucket's TickBatch from validated rows (a marker or a range alone makes an empty one:
    it still concerns its candles)."""
    exchange, symbol, bucket = key
    ids, ts, local, price, amount, side, fills = zip(*rows) if rows else ((),) * 7
    fill_keys, fill_index, fill_seq = fill_columns(fills)
    return TickBatch(exchange, symbol, native, list(ids), np.asarray(ts, dtype=np.int64),
                     np.asarray(local, dtype=np.int64), np.asarray(price, dtype=np.float64),
                     np.asarray(amount, dtype=np.float64), np.asarray(side, dtype=np.int8), bucket,
                     publish_time_us, bool(marker_us), marker_us=tuple(sorted(set(marker_us))),
                     missing=tuple(dict.fromkeys(missing)), fill_keys=fill_keys, fill_index=fill_index,
                     fill_seq=fill_seq)


class ParseTicksFn(beam.DoFn):
    """Pub/Sub messages (or replayed file records) → TickBatches; every invalid input to the
    dead-letter output with its payload and reason."""

    def __init__(self, max_future_seconds: int) -> None:
        self._max_future_us = max_future_seconds * 1_000_000
        self.messages = Metrics.counter("ticks", "messages")
        self.valid = Metrics.counter("ticks", "valid_ticks")
        self.invalid = Metrics.counter("ticks", "invalid_ticks")

    @dead_letter_on_error(STAGE_PARSE)
    def process(self, element: Any) -> Iterator[Any]:
        self.messages.inc()
        if hasattr(element, "num_rows"):  # a column chunk of a replayed Tardis CSV
            from transforms.tick_columns import parse_columns

            yield from self._emit(*parse_columns(element, self._max_future_us))
            return
        if isinstance(element, list):  # a chunk of already-decoded CSV records
            yield from self._emit(*parse_records(element, max_future_us=self._max_future_us))
            return
        if isinstance(element, (bytes, str)):  # a JSONL line of a replayed file
            data, attributes, publish_time_us = element, {}, 0
        else:  # a PubsubMessage
            data, attributes = element.data, dict(element.attributes or {})
            publish_time_us = (int(element.publish_time.timestamp() * 1e6)
                               if element.publish_time is not None else 0)
        yield from self._emit(*self._parse_message(data, attributes, publish_time_us))

    def _parse_message(self, data: Any, attributes: dict[str, str], publish_time_us: int
                       ) -> tuple[list[TickBatch], list[dict[str, Any]]]:
        try:
            decoded = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return [], [dead_letter(STAGE_PARSE, f"bad JSON: {exc}", data, attributes)]
        disconnects: Any = ()
        missing: Any = ()
        if isinstance(decoded, dict) and wire.BATCH_KEY in decoded:
            records = decoded[wire.BATCH_KEY]
            disconnects = decoded.get(wire.DISCONNECTS_KEY) or []
            missing = decoded.get(wire.MISSING_KEY) or []
            if not all(isinstance(part, list) for part in (records, disconnects, missing)):
                return [], [dead_letter(STAGE_PARSE, "ticks/disconnects/missing must be arrays", data,
                                        attributes)]
        else:
            records = [decoded]
        return parse_records(records, attributes, publish_time_us, self._max_future_us, disconnects,
                             missing=missing)

    def _emit(self, batches: list[TickBatch], dead: list[dict[str, Any]]) -> Iterator[Any]:
        for row in dead:
            self.invalid.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, row)
        for batch in batches:
            self.valid.inc(len(batch))
            yield TimestampedValue((batch.key, batch), Timestamp(micros=batch.event_time_us))


class ParseTicks(beam.PTransform):
    """Messages → ((exchange, symbol), TickBatch) stamped at event time; plus dead letters.

    Returns a DoOutputsTuple with the main output ``ticks`` and ``dead_letter``.
    """

    def __init__(self, max_future_seconds: int = 86_400) -> None:
        super().__init__()
        self._max_future_seconds = max_future_seconds

    def expand(self, messages: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        # Typed keys give the stateful steps downstream a deterministic key coder.
        return messages | "ParseAndValidate" >> beam.ParDo(
            ParseTicksFn(self._max_future_seconds)).with_output_types(
                Tuple[MarketKey, TickBatch]).with_outputs(DEAD_LETTER_TAG, main="ticks")
