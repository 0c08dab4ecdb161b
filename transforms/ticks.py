"""Ticks: parse and validate messages (SPEC §2), drop duplicates, route too-late ticks.

A tick travels as part of a ``TickBatch``: the ticks of ONE (exchange, symbol) inside ONE 15-second
bucket, as numpy columns. Beam's per-element cost (~20 µs on the DirectRunner) would cap a
per-tick pipeline far below market rates; a batch per bucket keeps the event-time semantics exact
(every tick of an element falls in the same window of every timeframe, since 15 s divides them
all) while the per-element cost is paid once per batch.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, Iterable, Iterator, Mapping, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.coders import BooleanCoder, PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (BagStateSpec, ReadModifyWriteStateSpec, TimerSpec,
                                              on_timer)
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from ingest import message as wire

BUCKET_US = 15_000_000  # the finest timeframe; every timeframe is a multiple of it
SIDE_CODES = {"buy": 1, "sell": -1, "unknown": 0}
SIDE_NAMES = {1: "buy", -1: "sell", 0: "unknown"}

DEAD_LETTER_TAG = "dead_letter"
LATE_TAG = "late"


@dataclass
class TickBatch:
    """Ticks of one (exchange, symbol) and one 15 s bucket, column-wise."""

    exchange: str
    symbol: str
    native_symbol: str
    ids: list[str]
    ts_us: np.ndarray  # int64 exchange event time
    local_ts_us: np.ndarray  # int64 receipt time at the worker
    price: np.ndarray  # float64
    amount: np.ndarray  # float64
    side: np.ndarray  # int8: 1 buy, -1 sell, 0 unknown
    bucket: int  # ts // BUCKET_US, shared by every tick of the batch
    publish_time_us: int = 0
    disconnect: bool = False  # the feed dropped/reconnected inside this bucket
    id_keys: np.ndarray | None = None  # trade_id_keys(ids), when a columnar parser had them at hand

    def __len__(self) -> int:
        return len(self.ids)

    def trade_keys(self) -> np.ndarray:
        """``trade_id_keys(ids)``, the dedup keys; computed here unless the parser gave them."""
        return trade_id_keys(self.ids) if self.id_keys is None else self.id_keys

    @property
    def event_time_us(self) -> int:
        """The element timestamp: the earliest tick, or the bucket start for a marker alone."""
        return int(self.ts_us.min()) if len(self) else self.bucket * BUCKET_US

    def take(self, mask: np.ndarray) -> "TickBatch":
        index = np.flatnonzero(mask)
        return TickBatch(self.exchange, self.symbol, self.native_symbol,
                         [self.ids[i] for i in index], self.ts_us[index], self.local_ts_us[index],
                         self.price[index], self.amount[index], self.side[index], self.bucket,
                         self.publish_time_us, self.disconnect,
                         None if self.id_keys is None else self.id_keys[index])

    def tick_dicts(self) -> Iterator[dict[str, Any]]:
        """The ticks back in wire format (for dead-letter payloads)."""
        for i, trade_id in enumerate(self.ids):
            yield wire.make_tick(self.exchange, self.symbol, self.native_symbol, trade_id,
                                 float(self.price[i]), float(self.amount[i]),
                                 SIDE_NAMES[int(self.side[i])], int(self.ts_us[i]),
                                 int(self.local_ts_us[i]))


def dead_letter(stage: str, reason: str, payload: Any, attributes: Mapping[str, str] | None = None,
                event_time_us: int | None = None) -> dict[str, Any]:
    """A dead_letter row (timestamps as µs; sinks format them)."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            import base64

            payload = "base64:" + base64.b64encode(payload).decode("ascii")
    elif not isinstance(payload, str):
        payload = json.dumps(payload, default=str, separators=(",", ":"))
    return {"stage": stage, "reason": reason, "payload": payload,
            "attributes": json.dumps(dict(attributes or {}), sort_keys=True),
            "event_time": event_time_us}


def _finite_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name} is not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} is not finite: {value!r}")
    return number


def _validate_tick(tick: Any, min_ts_us: int | None, max_ts_us: int) -> tuple:
    """One tick dict → (exchange, symbol, native, id, ts, local_ts, price, amount, side); raises
    ValueError with the reason for anything SPEC §2 calls invalid."""
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
    if isinstance(trade_id, bool) or not isinstance(trade_id, (str, int)):
        raise ValueError(f"id must be a string or integer: {trade_id!r}")
    price = _finite_number(tick[wire.FIELD_PRICE], "price")
    if price <= 0:
        raise ValueError(f"price must be > 0: {price!r}")
    amount = _finite_number(tick[wire.FIELD_AMOUNT], "amount")
    if amount < 0:
        raise ValueError(f"amount must be >= 0: {amount!r}")
    side = tick.get(wire.FIELD_SIDE) or "unknown"
    if side not in SIDE_CODES:
        raise ValueError(f"side must be buy, sell or unknown: {side!r}")
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
    native = tick.get(wire.FIELD_NATIVE_SYMBOL) or symbol
    return exchange, symbol, str(native), str(trade_id), ts_us, local_us, price, amount, SIDE_CODES[side]


def parse_records(records: Sequence[Any], attributes: Mapping[str, str] | None = None,
                  publish_time_us: int = 0, max_future_us: int = 86_400_000_000,
                  disconnects: Sequence[Any] = (), now_us: int | None = None
                  ) -> tuple[list[TickBatch], list[dict[str, Any]]]:
    """Validate tick dicts; group the good ones into TickBatches per (exchange, symbol, bucket).

    Returns (batches, dead-letter rows). The ``ts`` attribute, when present, must not be later
    than any tick: it is the element's timestamp, and Beam cannot move an element before it.
    """
    now_us = int(time.time() * 1e6) if now_us is None else now_us
    max_ts_us = now_us + max_future_us
    min_ts_us = None
    if attributes and attributes.get(wire.ATTR_EVENT_TIME):
        try:
            min_ts_us = int(attributes[wire.ATTR_EVENT_TIME]) * 1000
        except ValueError:
            reason = f"bad ts attribute {attributes[wire.ATTR_EVENT_TIME]!r}"
            return [], [dead_letter("parse", reason, tick, attributes) for tick in records] or \
                [dead_letter("parse", reason, records, attributes)]
    groups: dict[tuple[str, str, int], list[tuple]] = {}
    natives: dict[tuple[str, str], str] = {}
    dead: list[dict[str, Any]] = []
    for tick in records:
        try:
            exchange, symbol, native, trade_id, ts_us, local_us, price, amount, side = \
                _validate_tick(tick, min_ts_us, max_ts_us)
        except (ValueError, TypeError, OverflowError) as exc:
            dead.append(dead_letter("parse", str(exc), tick, attributes))
            continue
        key = (exchange, symbol, ts_us // BUCKET_US)
        natives.setdefault((exchange, symbol), native)
        groups.setdefault(key, []).append((trade_id, ts_us, local_us, price, amount, side))
    disconnect_buckets = set()
    for marker in disconnects:
        try:
            ts_us = wire.parse_time_us(marker[wire.FIELD_TIMESTAMP])
            exchange, symbol = str(marker[wire.FIELD_EXCHANGE]), str(marker[wire.FIELD_SYMBOL])
        except (ValueError, TypeError, KeyError) as exc:
            dead.append(dead_letter("parse", f"bad disconnect marker: {exc}", marker, attributes))
            continue
        key = (exchange, symbol, ts_us // BUCKET_US)
        disconnect_buckets.add(key)
        groups.setdefault(key, [])
        natives.setdefault((exchange, symbol), symbol)
    batches = []
    for key, rows in groups.items():
        exchange, symbol, bucket = key
        # A disconnect marker alone makes an empty batch: it still flags its bucket's candle.
        ids, ts, local, price, amount, side = zip(*rows) if rows else ((),) * 6
        batches.append(TickBatch(exchange, symbol, natives[(exchange, symbol)], list(ids),
                                 np.asarray(ts, dtype=np.int64), np.asarray(local, dtype=np.int64),
                                 np.asarray(price, dtype=np.float64),
                                 np.asarray(amount, dtype=np.float64),
                                 np.asarray(side, dtype=np.int8), bucket, publish_time_us,
                                 key in disconnect_buckets))
    return batches, dead


def _row_dicts(columns: Any, rows: np.ndarray) -> list[dict[str, Any]]:
    """Rows of a Tardis column chunk as wire-format dicts (cells as read, a null one as the empty
    cell it stands for), for the per-tick validator."""
    from ingest.files import TARDIS_HEADER, tardis_tick

    cells = [columns.column(name).take(rows).fill_null("").to_pylist() for name in TARDIS_HEADER]
    return [tardis_tick(list(row)) for row in zip(*cells)]


def _equals(column: Any, text: str, if_null: bool = False) -> np.ndarray:
    """Cell == text for a pyarrow string column, as a bool array; Arrow compares in C++ where
    numpy would compare one Python str per row."""
    import pyarrow.compute as pc

    return pc.equal(column, text).fill_null(if_null).to_numpy(zero_copy_only=False)


def _market_keys(exchange: Any, native: Any, rows: np.ndarray
                 ) -> tuple[list[tuple[str, str, str]], np.ndarray]:
    """The (exchange, user symbol, native symbol) markets of ``rows`` in name order, and each
    row's index into them: dictionary codes, so no Python string is made per row."""
    exchange_codes, native_codes = exchange.dictionary_encode(), native.dictionary_encode()
    native_count = len(native_codes.dictionary)

    def codes(encoded: Any) -> np.ndarray:  # a null cell's code is never among ``rows``
        return encoded.indices.fill_null(0).to_numpy()[rows].astype(np.int64)

    pair = codes(exchange_codes) * native_count + codes(native_codes)
    pairs, pair_index = np.unique(pair, return_inverse=True)
    exchange_names, native_names = exchange_codes.dictionary.to_pylist(), native_codes.dictionary.to_pylist()
    names = [(exchange_names[p // native_count], native_names[p % native_count]) for p in pairs.tolist()]
    by_name = sorted(range(len(names)), key=names.__getitem__)
    rank = np.empty(len(names), dtype=np.int64)
    rank[by_name] = np.arange(len(names))
    from ingest.symbols import to_user_symbol

    markets = [(names[i][0], to_user_symbol(names[i][1]), names[i][1]) for i in by_name]
    return markets, rank[pair_index]


def parse_columns(columns: Any, max_future_us: int = 86_400_000_000, now_us: int | None = None
                  ) -> tuple[list[TickBatch], list[dict[str, Any]]]:
    """A Tardis trades CSV chunk (pyarrow RecordBatch of strings) → TickBatches + dead letters.

    The same rules as ``parse_records``, vectorised: rows that fail them (or whose cells are not
    even numbers) go through the per-tick validator, which names the reason.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    now_us = int(time.time() * 1e6) if now_us is None else now_us

    valid = np.ones(columns.num_rows, dtype=bool)
    parsed = {}
    for name, kind in (("timestamp", pa.int64()), ("local_timestamp", pa.int64()),
                       ("price", pa.float64()), ("amount", pa.float64())):
        text = columns.column(name)
        try:  # the common case: every cell is a number
            parsed[name] = pc.cast(text, kind).to_numpy(zero_copy_only=False)
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        ok = pc.match_substring_regex(text, r"^-?[0-9]+$" if kind == pa.int64() else
                                      r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")
        ok = ok.fill_null(False).to_numpy(zero_copy_only=False)
        valid &= ok
        placeholder = pa.scalar("0", pa.string())
        parsed[name] = pc.cast(pc.if_else(pa.array(ok), text, placeholder), kind).to_numpy(zero_copy_only=False)
    ts, local, price, amount = parsed["timestamp"], parsed["local_timestamp"], parsed["price"], parsed["amount"]
    side_text = columns.column("side")
    buy, sell = _equals(side_text, "buy"), _equals(side_text, "sell")
    side = buy.view(np.int8) - sell.view(np.int8)
    valid &= buy | sell | _equals(side_text, "unknown") | _equals(side_text, "", if_null=True)
    valid &= (price > 0) & np.isfinite(price) & (amount >= 0) & np.isfinite(amount)
    valid &= (ts >= 0) & (ts <= now_us + max_future_us)
    valid &= (local >= 0) & (local <= now_us + max_future_us)
    for name in ("exchange", "symbol", "id"):
        valid &= ~_equals(columns.column(name), "", if_null=True)
    dead: list[dict[str, Any]] = []
    if not valid.all():
        _, dead = parse_records(_row_dicts(columns, np.flatnonzero(~valid)),
                                max_future_us=max_future_us, now_us=now_us)
    rows = np.flatnonzero(valid)
    if not rows.size:
        return [], dead
    symbols, key_index = _market_keys(columns.column("exchange"), columns.column("symbol"), rows)
    bucket = ts[rows] // BUCKET_US
    order = np.lexsort((ts[rows], bucket, key_index))
    rows, key_index, bucket = rows[order], key_index[order], bucket[order]
    starts = np.flatnonzero(np.r_[True, (np.diff(key_index) != 0) | (np.diff(bucket) != 0)])
    ends = np.r_[starts[1:], rows.size]
    id_column = columns.column("id").take(rows)
    ids, id_keys = id_column.to_pylist(), trade_id_keys_column(id_column)
    batches = []
    for start, end in zip(starts.tolist(), ends.tolist()):
        take = rows[start:end]
        exchange_name, user_symbol, native_symbol = symbols[key_index[start]]
        batches.append(TickBatch(exchange_name, user_symbol, native_symbol, ids[start:end],
                                 ts[take], local[take], price[take], amount[take], side[take],
                                 int(bucket[start]), id_keys=id_keys[start:end]))
    return batches, dead


class ParseTicksFn(beam.DoFn):
    """Pub/Sub messages (or replayed file records) → TickBatches; every invalid input to the
    dead-letter output with its payload and reason."""

    def __init__(self, max_future_seconds: int) -> None:
        self._max_future_us = max_future_seconds * 1_000_000
        self.messages = Metrics.counter("ticks", "messages")
        self.valid = Metrics.counter("ticks", "valid_ticks")
        self.invalid = Metrics.counter("ticks", "invalid_ticks")

    def process(self, element: Any) -> Iterator[Any]:
        self.messages.inc()
        attributes: dict[str, str] = {}
        publish_time_us = 0
        disconnects: Sequence[Any] = ()
        if hasattr(element, "num_rows"):  # a column chunk of a replayed Tardis CSV
            batches, dead = parse_columns(element, self._max_future_us)
            yield from self._emit(batches, dead)
            return
        if isinstance(element, (bytes, str)):  # a JSONL line of a replayed file
            data: Any = element
        elif isinstance(element, list):  # a chunk of already-decoded CSV records
            data = None
            records = element
        else:  # a PubsubMessage
            data = element.data
            attributes = dict(element.attributes or {})
            if element.publish_time is not None:
                publish_time_us = int(element.publish_time.timestamp() * 1e6)
        if data is not None:
            try:
                decoded = json.loads(data)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                self.invalid.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG,
                                               dead_letter("parse", f"bad JSON: {exc}", data, attributes))
                return
            if isinstance(decoded, dict) and wire.BATCH_KEY in decoded:
                records = decoded[wire.BATCH_KEY]
                disconnects = decoded.get(wire.DISCONNECTS_KEY) or []
                if not isinstance(records, list) or not isinstance(disconnects, list):
                    self.invalid.inc()
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(
                        "parse", "ticks/disconnects must be arrays", data, attributes))
                    return
            else:
                records = [decoded]
        yield from self._emit(*parse_records(records, attributes, publish_time_us,
                                             self._max_future_us, disconnects))

    def _emit(self, batches: list[TickBatch], dead: list[dict[str, Any]]) -> Iterator[Any]:
        for row in dead:
            self.invalid.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, row)
        for batch in batches:
            self.valid.inc(len(batch))
            yield TimestampedValue(((batch.exchange, batch.symbol, batch.bucket), batch),
                                   Timestamp(micros=batch.event_time_us))


class ParseTicks(beam.PTransform):
    """Messages → ((exchange, symbol, bucket), TickBatch) stamped at event time; plus dead letters.

    Returns a DoOutputsTuple with the main output and ``dead_letter``.
    """

    def __init__(self, max_future_seconds: int = 86_400) -> None:
        super().__init__()
        self._max_future_seconds = max_future_seconds

    def expand(self, messages: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        # Typed keys give the stateful steps downstream a deterministic key coder.
        return messages | "ParseAndValidate" >> beam.ParDo(
            ParseTicksFn(self._max_future_seconds)).with_output_types(
                Tuple[Tuple[str, str, int], TickBatch]).with_outputs(DEAD_LETTER_TAG, main="ticks")


_HASHED_ID = 1 << 63


def trade_id_keys(ids: Sequence[str]) -> np.ndarray:
    """Stable int64 keys of trade ids, for vectorised dedup: a canonical non-negative decimal id
    (most exchanges) is its own key; any other id (UUIDs, ...) is a 63-bit BLAKE2b hash with the
    sign bit set, so the two kinds never collide. Two distinct non-numeric ids of one 15 s bucket
    share a key with probability ~n²/2^64 (1e-9 for 150,000 ids)."""
    keys = np.empty(len(ids), dtype=np.int64)
    for i, trade_id in enumerate(ids):
        if (trade_id.isascii() and trade_id.isdigit() and len(trade_id) < 19
                and (trade_id[0] != "0" or trade_id == "0")):
            keys[i] = int(trade_id)
        else:
            digest = int.from_bytes(blake2b(trade_id.encode("utf-8"), digest_size=8).digest(), "little")
            keys[i] = (digest | _HASHED_ID) - (1 << 64)
    return keys


_CANONICAL_ID = r"^(0|[1-9][0-9]{0,17})$"  # the ids trade_id_keys reads as numbers


def trade_id_keys_column(ids: Any) -> np.ndarray:
    """``trade_id_keys`` of a pyarrow string array: numeric ids are matched and parsed in C++,
    not one Python int per tick; only other ids are hashed one by one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    numeric = pc.match_substring_regex(ids, _CANONICAL_ID).fill_null(False).to_numpy(zero_copy_only=False)
    keys = np.empty(len(ids), dtype=np.int64)
    keys[numeric] = pc.cast(ids.filter(numeric), pa.int64()).to_numpy()
    others = np.flatnonzero(~numeric)
    if others.size:
        keys[others] = trade_id_keys(ids.take(others).to_pylist())
    return keys


# int64 keys (``trade_id_keys``) of the ticks let through, one array per batch: a read
# decodes arrays, not one Python string per tick (it was quadratic in a busy bucket).
SEEN_IDS = BagStateSpec("seen_ids", PickleCoder())


class _DropDuplicatesFn(beam.DoFn):
    """The dedup both guards share: a tick whose id its (exchange, symbol, bucket) key already
    let through, or that repeats an earlier tick of its batch, is counted and dropped."""

    def __init__(self) -> None:
        self.duplicates = Metrics.counter("ticks", "duplicate_ticks")
        self.unique = Metrics.counter("ticks", "unique_ticks")

    def _unique_ticks(self, batch: TickBatch, seen_ids: Any) -> TickBatch:
        keys = batch.trade_keys()
        keep = np.zeros(len(keys), dtype=bool)
        keep[np.unique(keys, return_index=True)[1]] = True  # the first of repeats in the batch
        seen = list(seen_ids.read())
        if seen:
            keep &= ~np.isin(keys, np.concatenate(seen))
        if not keep.all():
            self.duplicates.inc(int((~keep).sum()))
            batch = batch.take(keep)
        if len(batch):
            seen_ids.add(keys[keep])
        self.unique.inc(len(batch))
        return batch


class GuardTicksFn(_DropDuplicatesFn):
    """Drops duplicate ticks (same id in the same bucket) and routes too-late ticks aside.

    Keyed by (exchange, symbol, bucket) in the global window, so state holds one bucket's ids:
    Pub/Sub delivers at least once and ``id_label`` is not honoured on the DirectRunner, so the
    pipeline dedups itself. The CLOSE timer fires when the watermark passes the bucket's end plus
    the allowed lateness; ticks arriving after it are too late for any candle and go to the
    ``late`` output (counted, dead-lettered), instead of being dropped by a window without a word.
    After closing, only a flag stays, for ``retention``: a tick later than that (a day, by
    default) is no longer recognised here and falls to the windows' own late-data drop.
    """

    CLOSED = ReadModifyWriteStateSpec("closed", BooleanCoder())  # lateness horizon has passed
    CLOSE = TimerSpec("close", TimeDomain.WATERMARK)  # bucket end + allowed lateness
    EXPIRE = TimerSpec("expire", TimeDomain.WATERMARK)  # CLOSE + retention: forget the bucket

    def __init__(self, allowed_lateness_seconds: int, retention_seconds: int) -> None:
        super().__init__()
        self._lateness_us = allowed_lateness_seconds * 1_000_000
        self._retention_us = retention_seconds * 1_000_000
        self.too_late = Metrics.counter("ticks", "too_late_ticks")

    def process(self, element: tuple[tuple[str, str, int], TickBatch],
                seen_ids: Any = beam.DoFn.StateParam(SEEN_IDS),
                closed: Any = beam.DoFn.StateParam(CLOSED),
                close_timer: Any = beam.DoFn.TimerParam(CLOSE)) -> Iterator[Any]:
        _, batch = element
        if closed.read():
            self.too_late.inc(len(batch))
            yield beam.pvalue.TaggedOutput(LATE_TAG, batch)
            return
        batch = self._unique_ticks(batch, seen_ids)
        if len(batch) or batch.disconnect:
            close_timer.set(Timestamp(micros=(batch.bucket + 1) * BUCKET_US + self._lateness_us))
            yield TimestampedValue(batch, Timestamp(micros=batch.event_time_us))

    @on_timer(CLOSE)
    def close(self, closed: Any = beam.DoFn.StateParam(CLOSED),
              seen_ids: Any = beam.DoFn.StateParam(SEEN_IDS),
              expire_timer: Any = beam.DoFn.TimerParam(EXPIRE),
              fired_at: Timestamp = beam.DoFn.TimestampParam) -> Iterable[Any]:
        closed.write(True)
        seen_ids.clear()  # every later tick of the bucket is too late: no need to know its id
        expire_timer.set(Timestamp(micros=fired_at.micros + self._retention_us))
        return ()

    @on_timer(EXPIRE)
    def expire(self, closed: Any = beam.DoFn.StateParam(CLOSED)) -> Iterable[Any]:
        closed.clear()
        return ()


class DropDuplicatesBoundedFn(_DropDuplicatesFn):
    """GuardTicksFn for a bounded input (file replay): the watermark stays before every tick until
    the whole input is read, so no tick can be late and the closed flag, its read per batch and
    its two timers per bucket (a third of a replay's CPU time) would never change an output."""

    def process(self, element: tuple[tuple[str, str, int], TickBatch],
                seen_ids: Any = beam.DoFn.StateParam(SEEN_IDS)) -> Iterator[Any]:
        batch = self._unique_ticks(element[1], seen_ids)
        if len(batch) or batch.disconnect:
            yield TimestampedValue(batch, Timestamp(micros=batch.event_time_us))


class LateTicksToDeadLetterFn(beam.DoFn):
    """One dead_letter row per too-late tick, with the tick's JSON as payload."""

    def process(self, batch: TickBatch) -> Iterator[dict[str, Any]]:
        attributes = {wire.ATTR_EXCHANGE: batch.exchange, wire.ATTR_SYMBOL: batch.symbol}
        for tick, ts_us in zip(batch.tick_dicts(), batch.ts_us):
            yield dead_letter("late", "tick arrived after its window's allowed lateness", tick,
                              attributes, int(ts_us))


class DedupTicks(beam.PTransform):
    """((exchange, symbol, bucket), TickBatch) → unique TickBatches; ``late`` output for too-late
    ticks (always empty for a ``bounded`` input)."""

    def __init__(self, allowed_lateness_seconds: int, retention_seconds: int,
                 bounded: bool = False) -> None:
        super().__init__()
        self._lateness = allowed_lateness_seconds
        self._retention = retention_seconds
        self._bounded = bounded

    def expand(self, keyed: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        guard = (DropDuplicatesBoundedFn() if self._bounded
                 else GuardTicksFn(self._lateness, self._retention))
        return keyed | "GuardTicks" >> beam.ParDo(guard).with_outputs(LATE_TAG, main="unique")


def tick_rows(batch: TickBatch) -> Iterator[dict[str, Any]]:
    """Rows of the ``ticks`` table (times as µs; sinks format them)."""
    for i, trade_id in enumerate(batch.ids):
        yield {
            "exchange": batch.exchange, "symbol": batch.symbol, "native_symbol": batch.native_symbol,
            "id": trade_id, "price": float(batch.price[i]), "amount": float(batch.amount[i]),
            "side": SIDE_NAMES[int(batch.side[i])], "timestamp": int(batch.ts_us[i]),
            "local_timestamp": int(batch.local_ts_us[i]),
            "publish_time": batch.publish_time_us or None,
        }
