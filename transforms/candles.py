"""OHLCV candles in fixed event-time windows aligned to UTC midnight (SPEC §3).

Every timeframe is computed directly from the deduplicated tick batches (one summary per
15-second batch, merged by ``CandleCombineFn``), so a 4h candle is exactly what its ticks give,
never an approximation rolled up from rounded children. Open and close are the ticks with the
smallest and largest (timestamp, id), so arrival order never changes a candle.
"""
from __future__ import annotations

import re
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
from transforms.ticks import BUCKET_US, TickBatch, is_canonical_number

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


# Accumulator layout (a list: cheap to pickle, merge and shuffle between workers). The volume
# sums are exact integers (transforms.exact) at AMOUNT_DECIMALS, quote volume at QUOTE_DECIMALS.
# MARKERS holds the disconnect marker times, MISSING the facts about missing ranges
# (transforms.completeness), SPAN the span a fragment of those facts covers (None for ticks).
(OPEN_KEY, OPEN_PRICE, OPEN_ID, CLOSE_KEY, CLOSE_PRICE, CLOSE_ID, HIGH, LOW, VOLUME, QUOTE_VOLUME,
 TRADES, BUY_VOLUME, SELL_VOLUME, BUY_TRADES, SELL_TRADES, PARTIAL, NATIVE_SYMBOL, AMOUNT_DECIMALS,
 QUOTE_DECIMALS, MARKERS, MISSING, SPAN) = range(22)
_AMOUNT_SUMS = (VOLUME, BUY_VOLUME, SELL_VOLUME)
# (amount, price) decimals each market needed so far in this process: the first guess for its
# next batch, so the fixed-point conversion costs one pass (see exact.to_fixed). A hint only
# changes the scale of the integers, never a sum's value, so a worker's history cannot change
# an output.
_DECIMALS_SEEN: dict[tuple[str, str], tuple[int, int]] = {}


def _extreme_tick(batch: TickBatch, ts_us: int, pick_last: bool) -> tuple[tuple, float, str]:
    """Among the ticks at time ts_us, the one with the smallest (or largest) id."""
    at_time = np.flatnonzero(batch.ts_us == ts_us)
    chooser = max if pick_last else min
    i = chooser(at_time, key=lambda j: id_order_key(batch.ids[j]))
    trade_id = batch.ids[i]
    return (ts_us, id_order_key(trade_id)), float(batch.price[i]), trade_id


def summarize_batch(batch: TickBatch) -> list[Any]:
    """A tick batch as a candle accumulator: vectorised reductions, one pass per column."""
    acc = empty_accumulator()
    acc[PARTIAL] = batch.disconnect
    acc[MARKERS] = batch.marker_us
    acc[NATIVE_SYMBOL] = batch.native_symbol
    if not len(batch):
        return acc
    price, side = batch.price, batch.side
    acc[OPEN_KEY], acc[OPEN_PRICE], acc[OPEN_ID] = _extreme_tick(batch, int(batch.ts_us.min()), False)
    acc[CLOSE_KEY], acc[CLOSE_PRICE], acc[CLOSE_ID] = _extreme_tick(batch, int(batch.ts_us.max()), True)
    acc[HIGH], acc[LOW] = float(price.max()), float(price.min())
    market = (batch.exchange, batch.native_symbol)
    (acc[VOLUME], acc[QUOTE_VOLUME], acc[BUY_VOLUME], acc[SELL_VOLUME], amount_decimals,
     price_decimals) = exact.batch_sums(price, batch.amount, side, _DECIMALS_SEEN.get(market, (0, 0)))
    _DECIMALS_SEEN[market] = (amount_decimals, price_decimals)
    acc[AMOUNT_DECIMALS], acc[QUOTE_DECIMALS] = amount_decimals, amount_decimals + price_decimals
    acc[TRADES] = len(batch)
    acc[BUY_TRADES] = int(np.count_nonzero(side == 1))
    acc[SELL_TRADES] = int(np.count_nonzero(side == -1))
    return acc


def merge_into(acc: list[Any], other: list[Any]) -> list[Any]:
    """Merge ``other`` into ``acc`` (mutating and returning acc)."""
    if acc[NATIVE_SYMBOL] is None:
        acc[NATIVE_SYMBOL] = other[NATIVE_SYMBOL]
    acc[PARTIAL] = bool(acc[PARTIAL] or other[PARTIAL])
    if other[MARKERS] and other[MARKERS] != acc[MARKERS]:
        acc[MARKERS] = tuple(sorted(set(acc[MARKERS]) | set(other[MARKERS])))
    acc[MISSING] = completeness.merge_facts(acc[MISSING], other[MISSING])
    if other[TRADES]:
        if not acc[TRADES] or other[OPEN_KEY] < acc[OPEN_KEY]:
            acc[OPEN_KEY], acc[OPEN_PRICE], acc[OPEN_ID] = other[OPEN_KEY], other[OPEN_PRICE], other[OPEN_ID]
        if not acc[TRADES] or other[CLOSE_KEY] > acc[CLOSE_KEY]:
            acc[CLOSE_KEY], acc[CLOSE_PRICE], acc[CLOSE_ID] = other[CLOSE_KEY], other[CLOSE_PRICE], other[CLOSE_ID]
        acc[HIGH] = other[HIGH] if acc[HIGH] is None else max(acc[HIGH], other[HIGH])
        acc[LOW] = other[LOW] if acc[LOW] is None else min(acc[LOW], other[LOW])
    for column in (TRADES, BUY_TRADES, SELL_TRADES):
        acc[column] += other[column]
    decimals = max(acc[AMOUNT_DECIMALS], other[AMOUNT_DECIMALS])
    for column in _AMOUNT_SUMS:
        acc[column] = (exact.rescale(acc[column], acc[AMOUNT_DECIMALS], decimals)
                       + exact.rescale(other[column], other[AMOUNT_DECIMALS], decimals))
    acc[AMOUNT_DECIMALS] = decimals
    decimals = max(acc[QUOTE_DECIMALS], other[QUOTE_DECIMALS])
    acc[QUOTE_VOLUME] = (exact.rescale(acc[QUOTE_VOLUME], acc[QUOTE_DECIMALS], decimals)
                         + exact.rescale(other[QUOTE_VOLUME], other[QUOTE_DECIMALS], decimals))
    acc[QUOTE_DECIMALS] = decimals
    return acc


def empty_accumulator() -> list[Any]:
    acc: list[Any] = [None] * 22
    acc[PARTIAL] = False
    acc[MARKERS] = ()
    acc[VOLUME] = acc[QUOTE_VOLUME] = acc[BUY_VOLUME] = acc[SELL_VOLUME] = 0
    acc[TRADES] = acc[BUY_TRADES] = acc[SELL_TRADES] = 0
    acc[AMOUNT_DECIMALS] = acc[QUOTE_DECIMALS] = 0
    return acc


def candle_values(acc: list[Any]) -> dict[str, Any]:
    """The OHLCV columns of a candle from its accumulator (times in µs)."""
    trades, amount_decimals = acc[TRADES], acc[AMOUNT_DECIMALS]
    volume = acc[VOLUME]
    # vwap = Σpq / Σq as one correctly rounded division of the exact integers
    vwap = (acc[QUOTE_VOLUME] * 10 ** amount_decimals / (volume * 10 ** acc[QUOTE_DECIMALS])
            if trades and volume > 0 else None)
    return {
        "native_symbol": acc[NATIVE_SYMBOL],
        "open": acc[OPEN_PRICE], "high": acc[HIGH], "low": acc[LOW], "close": acc[CLOSE_PRICE],
        "volume": exact.to_float(volume, amount_decimals),
        "quote_volume": exact.to_float(acc[QUOTE_VOLUME], acc[QUOTE_DECIMALS]), "trades": trades,
        "vwap": vwap,
        "buy_volume": exact.to_float(acc[BUY_VOLUME], amount_decimals),
        "sell_volume": exact.to_float(acc[SELL_VOLUME], amount_decimals),
        "buy_trades": acc[BUY_TRADES], "sell_trades": acc[SELL_TRADES],
        "first_trade_id": acc[OPEN_ID], "last_trade_id": acc[CLOSE_ID],
        "first_tick_time": acc[OPEN_KEY][0] if trades else None,
        "last_tick_time": acc[CLOSE_KEY][0] if trades else None,
        "is_partial": bool(acc[PARTIAL]),
        **completeness_values(acc[MARKERS], acc[MISSING]),
    }


def completeness_values(markers: tuple[int, ...], facts: Any) -> dict[str, Any]:
    """``missing_trades`` (known missing, not found yet), ``is_complete`` as far as this window's
    own facts tell (the sequencer adds what the series tells), and the UNCHECKED flag."""
    missing = completeness.missing_trades(facts)
    unchecked = completeness.has_unchecked_marker(markers, facts)
    return {"missing_trades": missing, "is_complete": missing == 0 and not unchecked, UNCHECKED: unchecked}


def fragment_accumulator(span: tuple[int, int], facts: dict) -> list[Any]:
    """An accumulator holding only facts about missing ranges, for every window of ``span``."""
    acc = empty_accumulator()
    acc[MISSING] = facts
    acc[SPAN] = span
    return acc


def batch_fragments(batch: TickBatch) -> list[list[Any]]:
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

    def create_accumulator(self) -> list[Any]:
        return empty_accumulator()

    def add_input(self, acc: list[Any], summary: list[Any]) -> list[Any]:
        return merge_into(acc, summary)

    def merge_accumulators(self, accumulators: Iterable[list[Any]]) -> list[Any]:
        merged = empty_accumulator()
        for acc in accumulators:
            merge_into(merged, acc)
        return merged

    def extract_output(self, acc: list[Any]) -> dict[str, Any]:
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
    def process(self, batch: TickBatch) -> Iterator[tuple[tuple[str, str, int], list[Any]]]:
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
                            completeness.SpanWindows(seconds * 1_000_000, SPAN),
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
