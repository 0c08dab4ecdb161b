"""OHLCV candles in fixed event-time windows aligned to UTC midnight (SPEC §3).

Every timeframe is computed directly from the deduplicated tick batches (one summary per
15-second batch, merged by ``CandleCombineFn``), so a 4h candle is exactly what its ticks give,
never an approximation rolled up from rounded children. Open and close are the ticks with the
smallest and largest (timestamp, id), so arrival order never changes a candle.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Iterator, NamedTuple, Optional

import apache_beam as beam
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration
from apache_beam.utils.windowed_value import PaneInfoTiming

from transforms import completeness
from transforms.candle_accumulator import (CandleAccumulator, batch_fragments, candle_values,
                                           empty_accumulator, merge_into, sequential_exchanges,
                                           summarize_batch)
from transforms.dead_letter import DEAD_LETTER_TAG, dead_letter_on_error
from transforms.global_flatten import GlobalFlatten
from transforms.tick_batch import BUCKET_US, TickBatch

PANE_INDEX = "pane_index"
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
