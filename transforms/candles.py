"""OHLCV candles in fixed event-time windows aligned to UTC midnight (SPEC §3).

Every timeframe is computed directly from the deduplicated tick batches (one summary per
15-second batch, merged by ``CandleCombineFn``), so a 4h candle is exactly what its ticks give,
never an approximation rolled up from rounded children. Open and close are the ticks with the
smallest and largest (timestamp, id), so arrival order never changes a candle.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Iterable, Iterator, NamedTuple, Optional

import apache_beam as beam
import numpy as np
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration
from apache_beam.utils.windowed_value import PaneInfoTiming

from transforms import completeness, exact
from transforms.dead_letter import DEAD_LETTER_TAG, dead_letter_on_error
from transforms.global_flatten import GlobalFlatten
from transforms.tick_batch import BUCKET_US, TickBatch, is_canonical_number

PANE_INDEX = "pane_index"
# Not an output column either: a disconnect marker of the window that no missing range covers
# (the sequencer carries it over the gap candles that follow).
UNCHECKED = "unchecked_disconnect"
STAGE_CANDLES = "candles"
DAY_SECONDS = 86_400
LONG_TIMEFRAME_SECONDS = 4 * 3600  # 4h and longer get provisional early panes
_TIMEFRAME = re.compile(r"^\s*(\d+)\s*([smhd])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def timeframe_label(seconds: int) -> str:
    """86400 → '24h', 900 → '15m', 15 → '15s' (the labels the tables use)."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def parse_timeframes(text: str) -> list[tuple[str, int]]:
    """'15s,1m,1d' → [('15s', 15), ('1m', 60), ('24h', 86400)], sorted, validated.

    A timeframe must be a multiple of 15 s (the tick batch bucket) and divide 24h, so every
    window is aligned to UTC midnight.
    """
    result: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _TIMEFRAME.match(part)
        if not match:
            raise ValueError(f"bad timeframe {part!r}: use e.g. 15s, 1m, 4h, 24h")
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        if seconds <= 0 or seconds % (BUCKET_US // 1_000_000) or DAY_SECONDS % seconds:
            raise ValueError(f"timeframe {part!r} must be a multiple of 15s that divides 24h")
        result[seconds] = timeframe_label(seconds)
    if not result:
        raise ValueError("no timeframe given")
    return [(label, seconds) for seconds, label in sorted(result.items())]


def id_order_key(trade_id: str) -> tuple[int, int, str]:
    """Trade ids order numerically when they are ASCII integers (Binance), else as strings
    (UUIDs; also '²', which ``str.isdigit`` calls a digit and ``int`` refuses)."""
    return (0, int(trade_id), "") if is_canonical_number(trade_id) else (1, 0, trade_id)


# (amount, price) decimals each market needed so far in this process: the first guess for its
# next batch, so the fixed-point conversion costs one pass (see exact.to_fixed). A hint only
# changes the scale of the integers, never a sum's value, so a worker's history cannot change
# an output.
_DECIMALS_SEEN: dict[tuple[str, str], tuple[int, int]] = {}


class EdgeTrade(NamedTuple):
    """The open (or close) trade: the smallest (largest) ``key`` = (ts µs, id order key)."""
    key: tuple[int, tuple[int, int, str]]
    price: float
    trade_id: str


@dataclass(slots=True)
class CandleAccumulator:
    """What a candle knows so far, field by field the SPEC's columns (§3).

    Volumes are exact integers (``transforms.exact``): the base volumes at ``amount_decimals``,
    the quote volume at ``quote_decimals``. ``markers`` are the disconnect marker times,
    ``missing`` the facts about missing ranges (``transforms.completeness``), and ``span`` the
    span a fragment of those facts covers (None for ticks: ``SpanWindows`` reads it).
    """
    native_symbol: Optional[str] = None
    open: Optional[EdgeTrade] = None
    close: Optional[EdgeTrade] = None
    high: Optional[float] = None
    low: Optional[float] = None
    trades: int = 0
    buy_trades: int = 0
    sell_trades: int = 0
    volume: int = 0
    buy_volume: int = 0
    sell_volume: int = 0
    amount_decimals: int = 0
    quote_volume: int = 0
    quote_decimals: int = 0
    is_partial: bool = False
    markers: tuple[int, ...] = ()
    missing: Any = None
    span: Optional[tuple[int, int]] = None

    def __reduce__(self) -> tuple:
        """Pickled as a flat tuple of plain values (4x smaller than a dataclass's default):
        summaries and partial candles cross the shuffle."""
        values = [getattr(self, name) for name in _FIELDS]
        values[_OPEN] = values[_OPEN] and tuple(values[_OPEN])
        values[_CLOSE] = values[_CLOSE] and tuple(values[_CLOSE])
        return _restore_accumulator, tuple(values)


_FIELDS = tuple(field.name for field in fields(CandleAccumulator))
_OPEN, _CLOSE = _FIELDS.index("open"), _FIELDS.index("close")


def _restore_accumulator(*values: Any) -> CandleAccumulator:
    acc = CandleAccumulator(*values)
    acc.open = acc.open and EdgeTrade(*acc.open)
    acc.close = acc.close and EdgeTrade(*acc.close)
    return acc


def _edge_trade(batch: TickBatch, ts_us: int, pick_last: bool) -> EdgeTrade:
    """Among the ticks at time ts_us, the one with the smallest (or largest) id."""
    at_time = np.flatnonzero(batch.ts_us == ts_us)
    chooser = max if pick_last else min
    i = chooser(at_time, key=lambda j: id_order_key(batch.ids[j]))
    trade_id = batch.ids[i]
    return EdgeTrade((ts_us, id_order_key(trade_id)), float(batch.price[i]), trade_id)


def summarize_batch(batch: TickBatch) -> CandleAccumulator:
    """A tick batch as a candle accumulator: vectorised reductions, one pass per column."""
    acc = CandleAccumulator(native_symbol=batch.native_symbol, is_partial=batch.disconnect,
                            markers=batch.marker_us)
    if not len(batch):
        return acc
    price, side = batch.price, batch.side
    acc.open = _edge_trade(batch, int(batch.ts_us.min()), False)
    acc.close = _edge_trade(batch, int(batch.ts_us.max()), True)
    acc.high, acc.low = float(price.max()), float(price.min())
    market = (batch.exchange, batch.native_symbol)
    (acc.volume, acc.quote_volume, acc.buy_volume, acc.sell_volume, amount_decimals,
     price_decimals) = exact.batch_sums(price, batch.amount, side, _DECIMALS_SEEN.get(market, (0, 0)))
    _DECIMALS_SEEN[market] = (amount_decimals, price_decimals)
    acc.amount_decimals, acc.quote_decimals = amount_decimals, amount_decimals + price_decimals
    acc.trades = len(batch)
    acc.buy_trades = int(np.count_nonzero(side == 1))
    acc.sell_trades = int(np.count_nonzero(side == -1))
    return acc


def merge_into(acc: CandleAccumulator, other: CandleAccumulator) -> CandleAccumulator:
    """Merge ``other`` into ``acc`` (mutating and returning acc)."""
    if acc.native_symbol is None:
        acc.native_symbol = other.native_symbol
    acc.is_partial = bool(acc.is_partial or other.is_partial)
    if other.markers and other.markers != acc.markers:
        acc.markers = tuple(sorted(set(acc.markers) | set(other.markers)))
    acc.missing = completeness.merge_facts(acc.missing, other.missing)
    if other.trades:
        if not acc.trades or other.open.key < acc.open.key:
            acc.open = other.open
        if not acc.trades or other.close.key > acc.close.key:
            acc.close = other.close
        acc.high = other.high if acc.high is None else max(acc.high, other.high)
        acc.low = other.low if acc.low is None else min(acc.low, other.low)
    acc.trades += other.trades
    acc.buy_trades += other.buy_trades
    acc.sell_trades += other.sell_trades
    decimals = max(acc.amount_decimals, other.amount_decimals)
    acc.volume = _exact_add(acc.volume, acc.amount_decimals, other.volume, other.amount_decimals, decimals)
    acc.buy_volume = _exact_add(acc.buy_volume, acc.amount_decimals, other.buy_volume,
                                other.amount_decimals, decimals)
    acc.sell_volume = _exact_add(acc.sell_volume, acc.amount_decimals, other.sell_volume,
                                 other.amount_decimals, decimals)
    acc.amount_decimals = decimals
    decimals = max(acc.quote_decimals, other.quote_decimals)
    acc.quote_volume = _exact_add(acc.quote_volume, acc.quote_decimals, other.quote_volume,
                                  other.quote_decimals, decimals)
    acc.quote_decimals = decimals
    return acc


def _exact_add(value: int, decimals: int, other: int, other_decimals: int, target: int) -> int:
    return exact.rescale(value, decimals, target) + exact.rescale(other, other_decimals, target)


def empty_accumulator() -> CandleAccumulator:
    return CandleAccumulator()


def candle_values(acc: CandleAccumulator) -> dict[str, Any]:
    """The OHLCV columns of a candle from its accumulator (times in µs)."""
    trades, amount_decimals, volume = acc.trades, acc.amount_decimals, acc.volume
    # vwap = Σpq / Σq as one correctly rounded division of the exact integers
    vwap = (acc.quote_volume * 10 ** amount_decimals / (volume * 10 ** acc.quote_decimals)
            if trades and volume > 0 else None)
    return {
        "native_symbol": acc.native_symbol,
        "open": acc.open.price if acc.open else None, "high": acc.high, "low": acc.low,
        "close": acc.close.price if acc.close else None,
        "volume": exact.to_float(volume, amount_decimals),
        "quote_volume": exact.to_float(acc.quote_volume, acc.quote_decimals), "trades": trades,
        "vwap": vwap,
        "buy_volume": exact.to_float(acc.buy_volume, amount_decimals),
        "sell_volume": exact.to_float(acc.sell_volume, amount_decimals),
        "buy_trades": acc.buy_trades, "sell_trades": acc.sell_trades,
        "first_trade_id": acc.open.trade_id if acc.open else None,
        "last_trade_id": acc.close.trade_id if acc.close else None,
        "first_tick_time": acc.open.key[0] if trades else None,
        "last_tick_time": acc.close.key[0] if trades else None,
        "is_partial": bool(acc.is_partial),
        **completeness_values(acc.markers, acc.missing),
    }


def completeness_values(markers: tuple[int, ...], facts: Any) -> dict[str, Any]:
    """``missing_trades`` (known missing, not found yet), ``is_complete`` as far as this window's
    own facts tell (the sequencer adds what the series tells), and the UNCHECKED flag."""
    missing = completeness.missing_trades(facts)
    unchecked = completeness.has_unchecked_marker(markers, facts)
    return {"missing_trades": missing, "is_complete": missing == 0 and not unchecked, UNCHECKED: unchecked}


def fragment_accumulator(span: tuple[int, int], facts: dict) -> CandleAccumulator:
    """An accumulator holding only facts about missing ranges, for every window of ``span``."""
    return CandleAccumulator(missing=facts, span=span)


def batch_fragments(batch: TickBatch) -> list[CandleAccumulator]:
    """The facts a batch brings about missing ranges, one fragment per range: the ranges it
    reports (their count) and the ranges its ticks fill (their sequence numbers)."""
    fragments = [fragment_accumulator((from_us, to_us), {(from_us, to_us, from_seq): (count, ())})
                 for from_us, to_us, from_seq, count in batch.missing]
    for key, seqs in batch.fills().items():
        fragments.append(fragment_accumulator(key[:2], {key: (None, completeness.intervals_of(seqs.tolist()))}))
    return fragments


@lru_cache(maxsize=1)
def sequential_exchanges() -> frozenset[str]:
    """Venues whose trade ids are sequential per instrument (``ingest/contract/venues.json``):
    only there can a worker tell what is missing."""
    from ingest.venues import load

    return load().sequential_exchanges


class CandleCombineFn(beam.CombineFn):
    """Tick-batch summaries → one candle's OHLCV; order-independent and exact: O/H/L/C and counts
    as given, volume sums as exact decimals (``transforms.exact``)."""

    def create_accumulator(self) -> CandleAccumulator:
        return empty_accumulator()

    def add_input(self, acc: CandleAccumulator, summary: CandleAccumulator) -> CandleAccumulator:
        return merge_into(acc, summary)

    def merge_accumulators(self, accumulators: Iterable[CandleAccumulator]) -> CandleAccumulator:
        merged = empty_accumulator()
        for acc in accumulators:
            merge_into(merged, acc)
        return merged

    def extract_output(self, acc: CandleAccumulator) -> dict[str, Any]:
        return candle_values(acc)


def candle_row(exchange: str, symbol: str, timeframe: str, start_us: int, end_us: int,
            values: dict[str, Any], is_final: bool, pane_index: int) -> dict[str, Any]:
    candle = {"exchange": exchange, "symbol": symbol, "timeframe": timeframe,
              "timestamp_in": start_us, "window_end": end_us}
    candle.update(values)
    if exchange not in sequential_exchanges():  # the venue cannot tell what is missing
        candle["missing_trades"], candle["is_complete"] = None, False
    candle["is_gap"] = False
    candle["is_final"] = is_final
    candle[PANE_INDEX] = pane_index  # orders panes of one window; not an output column
    return candle


class SummarizeBatchFn(beam.DoFn):
    """A tick batch → ((exchange, symbol, bucket start µs), accumulator), for the combines: its
    ticks and markers, and one fragment per missing range it reports or fills (SpanWindows
    gives a fragment to every window of its span)."""

    @dead_letter_on_error(STAGE_CANDLES)
    def process(self, batch: TickBatch) -> Iterator[tuple[tuple[str, str, int], CandleAccumulator]]:
        key = (batch.exchange, batch.symbol, batch.bucket * BUCKET_US)
        if len(batch) or batch.disconnect:
            yield key, summarize_batch(batch)
        for fragment in batch_fragments(batch):
            yield key, fragment


class CandleFromPaneFn(beam.DoFn):
    """Adds the window bounds, timeframe and pane finality to a combined candle."""

    def __init__(self, timeframe: str) -> None:
        self._timeframe = timeframe

    @dead_letter_on_error(STAGE_CANDLES)
    def process(self, element: tuple[tuple[str, str], dict[str, Any]],
                candle_window: window.IntervalWindow = beam.DoFn.WindowParam,
                pane: Any = beam.DoFn.PaneInfoParam) -> Iterator[dict[str, Any]]:
        (exchange, symbol), values = element
        yield candle_row(exchange, symbol, self._timeframe, candle_window.start.micros,
                      candle_window.end.micros, values, pane.timing != PaneInfoTiming.EARLY,
                      pane.index)


class CandleFromKeyFn(beam.DoFn):
    """Bounded runs: the timeframe and window are part of the key (transforms.bounded_candles)."""

    def __init__(self, timeframes: list[tuple[str, int]]) -> None:
        self._length_us = {label: seconds * 1_000_000 for label, seconds in timeframes}

    @dead_letter_on_error(STAGE_CANDLES)
    def process(self, element: tuple[tuple[str, str, str, int], dict[str, Any]]
                ) -> Iterator[dict[str, Any]]:
        (exchange, symbol, timeframe, start_us), values = element
        yield candle_row(exchange, symbol, timeframe, start_us, start_us + self._length_us[timeframe],
                         values, True, 0)


class CandlesFromTicks(beam.PTransform):
    """Unique TickBatches → candle dicts for every timeframe (one per pane: on-time, late, early).

    Windows fire when the watermark passes their end; each late tick within the allowed lateness
    fires a corrected pane (accumulating, so the pane is the whole candle, never a delta); 4h and
    longer windows also fire provisional panes every ``early_firing_seconds`` of processing time.
    A bounded input (replay, backfill) takes ``transforms.bounded_candles`` instead: hour groups
    and the same accumulator functions, without windows and triggers.
    """

    def __init__(self, timeframes: list[tuple[str, int]], allowed_lateness_seconds: int,
                 early_firing_seconds: int = 0) -> None:
        super().__init__()
        self._timeframes = timeframes
        self._lateness = allowed_lateness_seconds
        self._early = early_firing_seconds

    def _trigger(self, seconds: int) -> trigger.TriggerFn:
        early: Optional[trigger.TriggerFn] = None
        if self._early > 0 and seconds >= LONG_TIMEFRAME_SECONDS:
            early = trigger.AfterProcessingTime(self._early)
        return trigger.AfterWatermark(early=early, late=trigger.AfterCount(1))

    def expand(self, batches: beam.PCollection) -> "CandlePanes":
        summaries = batches | "Summarize" >> beam.ParDo(SummarizeBatchFn()).with_outputs(
            DEAD_LETTER_TAG, main="summaries")
        failures = [summaries[DEAD_LETTER_TAG]]
        per_timeframe = []
        for label, seconds in self._timeframes:
            labelled = (summaries.summaries
                        | f"KeyBySymbol{label}" >> beam.Map(lambda kv: ((kv[0][0], kv[0][1]), kv[1]))
                        | f"Window{label}" >> beam.WindowInto(
                            completeness.SpanWindows(seconds * 1_000_000, "span"),
                            trigger=self._trigger(seconds),
                            accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                            allowed_lateness=Duration(seconds=self._lateness))
                        | f"Combine{label}" >> beam.CombinePerKey(CandleCombineFn())
                        | f"Label{label}" >> beam.ParDo(CandleFromPaneFn(label)).with_outputs(
                            DEAD_LETTER_TAG, main="candles"))
            per_timeframe.append(labelled.candles)
            failures.append(labelled[DEAD_LETTER_TAG])
        return CandlePanes(tuple(per_timeframe) | "AllTimeframes" >> GlobalFlatten(),
                           tuple(failures) | "CandleFailures" >> GlobalFlatten())


class CandlePanes(NamedTuple):
    candles: beam.PCollection  # candle dicts, one per pane
    dead_letter: beam.PCollection
