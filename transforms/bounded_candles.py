"""Candles of a bounded run (replay, backfill) from hour groups: few, large elements.

A stream needs one element per (symbol, 15 s bucket) and per-key state, because ticks arrive over
time. A bounded run has them all, and there that granularity is the cost: Beam's per-element and
per-state-call overhead (paid through the runner process, in the DirectRunner's multi-processing
mode) dwarfs the arithmetic. So here ticks are grouped by (exchange, symbol, UTC hour):

1. ``RegroupByHourFn`` joins the parsed batches of a bundle into one batch per hour;
2. ``GroupByKey`` brings the hour's ticks from every file together, and ``HourCandlesFn``
   deduplicates them by trade id, summarizes each 15 s bucket with the very functions of the
   streaming CombineFn (``summarize_batch``/``merge_into``), and emits every candle that lies in
   the hour (timeframes dividing 1h) as one list per series, and accumulators of longer windows
   (4h, 24h) for a ``CombinePerKey`` across hours;
3. ``SequenceGroupedFn`` gets each whole series at once (``GroupByKey``) and runs ``CandleSeries``'
   end-of-input flush on it (gaps, partial flags, vectorised features), without state calls,
   and optionally the series checkpoint a stream continues from (transforms.checkpoint).

The results equal what one element per bucket gives (same functions, same order-free merges).
Facts about missing ranges (``transforms.completeness``) concern every window of their span, so a
fragment goes to each hour its span touches, and each window takes it from exactly one hour:
the hour where the span enters the window.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, NamedTuple, Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from transforms.candle_accumulator import (CandleAccumulator, batch_fragments, candle_values,
                                           merge_into, summarize_batch)
from transforms.candle_series import CandleSeries
from transforms.candles import CandleCombineFn, CandleFromKeyFn, candle_row
from transforms.checkpoint import checkpoint_of_series
from transforms.completeness import window_starts
from transforms.dead_letter import DEAD_LETTER_TAG, dead_letter_on_error
from transforms.global_flatten import GlobalFlatten
from transforms.sequencer import drain
from transforms.tick_batch import BUCKET_US, MarketKey, TickBatch

HOUR_US = 3_600_000_000
BUCKETS_PER_HOUR = HOUR_US // BUCKET_US
REGROUP_FLUSH_TICKS = 1_000_000  # a bundle's buffer is flushed past this many ticks
CANDLES_TAG = "candles"
PARTIALS_TAG = "partials"
CHECKPOINTS_TAG = "checkpoints"
STAGE_BOUNDED = "bounded_candles"

# Ticks of an hour, the disconnect marker times of each of its buckets, and the fragments of
# facts about missing ranges whose span touches the hour.
HourGroup = tuple[TickBatch, dict[int, tuple[int, ...]], list[CandleAccumulator]]


def concat_batches(batches: list[TickBatch], bucket: int) -> TickBatch:
    """One TickBatch of several of one (exchange, symbol); ``bucket`` labels it (e.g. the hour)."""
    first = batches[0]
    if len(batches) == 1:
        return TickBatch(first.exchange, first.symbol, first.native_symbol, first.ids, first.ts_us,
                         first.local_ts_us, first.price, first.amount, first.side, bucket,
                         id_keys=first.trade_keys())
    return TickBatch(first.exchange, first.symbol, first.native_symbol,
                     [trade_id for b in batches for trade_id in b.ids],
                     np.concatenate([b.ts_us for b in batches]),
                     np.concatenate([b.local_ts_us for b in batches]),
                     np.concatenate([b.price for b in batches]),
                     np.concatenate([b.amount for b in batches]),
                     np.concatenate([b.side for b in batches]), bucket,
                     id_keys=np.concatenate([b.trade_keys() for b in batches]))


def take_index(batch: TickBatch, index: np.ndarray | slice) -> TickBatch:
    """The ticks at ``index`` (positions or a slice: views, no copy), in that order."""
    ids = batch.ids[index] if isinstance(index, slice) else [batch.ids[i] for i in index.tolist()]
    return TickBatch(batch.exchange, batch.symbol, batch.native_symbol, ids, batch.ts_us[index],
                     batch.local_ts_us[index], batch.price[index], batch.amount[index],
                     batch.side[index], batch.bucket, batch.publish_time_us, batch.disconnect,
                     None if batch.id_keys is None else batch.id_keys[index])


class _Hour:
    """What a bundle gathered for one (exchange, symbol, hour)."""

    def __init__(self) -> None:
        self.batches: list[TickBatch] = []
        self.fragments: list[CandleAccumulator] = []


class RegroupByHourFn(beam.DoFn):
    """((exchange, symbol), TickBatch) → ((exchange, symbol, hour), HourGroup): a bundle's
    batches joined per hour, so the shuffle moves few large elements."""

    def start_bundle(self) -> None:
        self._buffer: dict[tuple[str, str, int], _Hour] = {}
        self._ticks = 0

    @dead_letter_on_error(STAGE_BOUNDED)
    def process(self, element: tuple[MarketKey, TickBatch]) -> Iterator[Any]:
        (exchange, symbol), batch = element
        self._buffer.setdefault((exchange, symbol, batch.bucket // BUCKETS_PER_HOUR), _Hour()).batches.append(batch)
        for fragment in batch_fragments(batch):  # facts of every copy: they merge idempotently
            from_us, to_us = fragment.span
            for hour in range(from_us // HOUR_US, to_us // HOUR_US + 1):
                self._buffer.setdefault((exchange, symbol, hour), _Hour()).fragments.append(fragment)
        self._ticks += len(batch)
        if self._ticks >= REGROUP_FLUSH_TICKS:
            for key, group in self._flush():
                yield TimestampedValue((key, group), Timestamp(micros=key[2] * HOUR_US))

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for key, group in self._flush():
            yield WindowedValue((key, group), key[2] * HOUR_US / 1e6, [GlobalWindow()])

    def _flush(self) -> Iterator[tuple[tuple[str, str, int], HourGroup]]:
        buffer, self._buffer, self._ticks = self._buffer, {}, 0
        for key, hour in buffer.items():
            markers: dict[int, tuple[int, ...]] = {}
            for batch in hour.batches:
                if batch.marker_us:
                    markers[batch.bucket] = tuple(sorted(set(markers.get(batch.bucket, ()) + batch.marker_us)))
            batches = [b for b in hour.batches if len(b)] or hour.batches[:1] or [_empty_batch(key)]
            yield key, (concat_batches(batches, key[2]), markers, hour.fragments)


def _empty_batch(key: tuple[str, str, int]) -> TickBatch:
    """No tick of a market's hour: one only facts from batches of other hours concern."""
    return TickBatch(key[0], key[1], key[1], [], np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64),
                     np.empty(0), np.empty(0), np.empty(0, dtype=np.int8), key[2] * BUCKETS_PER_HOUR)


class HourCandlesFn(beam.DoFn):
    """An hour of one (exchange, symbol), from every file → its unique ticks (main output), the
    candles of the timeframes that divide 1h as one list per timeframe (``candles``), and
    ((exchange, symbol, timeframe, window start), accumulator) of longer ones (``partials``)."""

    def __init__(self, timeframes: list[tuple[str, int]]) -> None:
        self._timeframes = timeframes
        self.duplicates = Metrics.counter("ticks", "duplicate_ticks")
        self.unique = Metrics.counter("ticks", "unique_ticks")

    @dead_letter_on_error(STAGE_BOUNDED)
    def process(self, element: tuple[tuple[str, str, int], Iterable[HourGroup]]) -> Iterator[Any]:
        (exchange, symbol, hour), groups = element
        groups = list(groups)
        markers: dict[int, set[int]] = {}
        for _, group_markers, _ in groups:
            for bucket, times in group_markers.items():
                markers.setdefault(bucket, set()).update(times)
        fragments = [fragment for _, _, group_fragments in groups for fragment in group_fragments]
        batch = concat_batches(sorted((b for b, _, _ in groups), key=lambda b: not len(b)), hour)
        keys = batch.trade_keys()
        _, first = np.unique(keys, return_index=True)  # the first copy of every trade id
        if first.size < len(batch):
            self.duplicates.inc(len(batch) - int(first.size))
            keep = np.zeros(len(batch), dtype=bool)
            keep[first] = True
            batch = batch.take(keep)
        self.unique.inc(len(batch))
        if len(batch):
            yield batch
        summaries = self._bucket_summaries(batch, markers)
        for label, seconds in self._timeframes:
            length_us = seconds * 1_000_000
            windows: dict[int, CandleAccumulator] = {}
            for bucket, summary in summaries:
                start = bucket * BUCKET_US - bucket * BUCKET_US % length_us
                merge_into(windows.setdefault(start, CandleAccumulator()), summary)
            for fragment in fragments:
                for start in _windows_from_this_hour(fragment.span, length_us, hour):
                    merge_into(windows.setdefault(start, CandleAccumulator()), fragment)
            if HOUR_US % length_us:  # the window reaches past the hour: combined across hours
                for start, acc in windows.items():
                    yield beam.pvalue.TaggedOutput(PARTIALS_TAG, ((exchange, symbol, label, start), acc))
            elif windows:
                yield beam.pvalue.TaggedOutput(CANDLES_TAG, [
                    candle_row(exchange, symbol, label, start, start + length_us, candle_values(acc), True, 0)
                    for start, acc in sorted(windows.items())])

    @staticmethod
    def _bucket_summaries(batch: TickBatch, markers: dict[int, set[int]]) -> list[tuple[int, CandleAccumulator]]:
        """(bucket, accumulator) of every 15 s bucket with ticks or a disconnect marker."""
        summaries = []
        if len(batch):
            ordered = take_index(batch, np.argsort(batch.ts_us // BUCKET_US, kind="stable"))
            buckets = ordered.ts_us // BUCKET_US
            bounds = np.flatnonzero(np.r_[True, np.diff(buckets) != 0, True]).tolist()
            for start, end in zip(bounds, bounds[1:]):
                bucket = int(buckets[start])
                summary = summarize_batch(take_index(ordered, slice(start, end)))
                summary.is_partial = bucket in markers
                summary.markers = tuple(sorted(markers.get(bucket, ())))
                summaries.append((bucket, summary))
        with_ticks = {bucket for bucket, _ in summaries}
        for bucket in sorted(set(markers) - with_ticks):  # a marker alone still flags its candles
            summaries.append((bucket, CandleAccumulator(is_partial=True, markers=tuple(sorted(markers[bucket])))))
        return summaries


def _windows_from_this_hour(span: tuple[int, int], length_us: int, hour: int) -> list[int]:
    """The windows of ``length_us`` a fragment's span touches that take it from this hour: the
    hour where the span enters the window (so a window longer than an hour counts it once)."""
    return [start for start in window_starts(*span, length_us)
            if max(span[0], start) // HOUR_US == hour]


class SequenceGroupedFn(beam.DoFn):
    """((exchange, symbol, timeframe), candle lists) → the ordered rows with gaps and features:
    the end-of-input flush of a bounded ``CandleSeries``, on the whole series. With
    ``checkpoints``, also the last series' checkpoint (``CHECKPOINTS_TAG``) for a stream to go on."""

    def __init__(self, series: CandleSeries, timeframes: list[tuple[str, int]],
                 feature_timeframes: set[str], checkpoints: bool) -> None:
        if not series.bounded:
            raise ValueError("a stream sequences its candles as they come (sequencer.SequenceCandlesFn)")
        self._series = series
        self._seconds = dict(timeframes)
        self._feature_timeframes = feature_timeframes
        self._checkpoints = checkpoints

    @dead_letter_on_error(STAGE_BOUNDED)
    def process(self, element: tuple[tuple[str, str, str], Iterable[list[dict[str, Any]]]]
                ) -> Iterator[Any]:
        key, blocks = element
        series = self._series.flush(candle for block in blocks for candle in block)
        for rows in series:
            yield from rows
        yield from drain(self._series)
        if self._checkpoints and series[-1]:
            timeframe = key[2]
            seconds = self._seconds[timeframe]
            checkpoint = checkpoint_of_series(
                key, series[-1], seconds, timeframe in self._feature_timeframes,
                self._series.history_limit(seconds * 1_000_000))
            yield beam.pvalue.TaggedOutput(CHECKPOINTS_TAG, checkpoint)


class BoundedOutputs(NamedTuple):
    ticks: beam.PCollection  # unique TickBatches (an hour of a market each)
    candles: beam.PCollection  # ordered candle rows of every timeframe, gaps and features
    checkpoints: Optional[beam.PCollection]  # series checkpoints, when asked for
    dead_letter: beam.PCollection


class BoundedCandles(beam.PTransform):
    """Parsed ((exchange, symbol), TickBatch) of a bounded input → ``BoundedOutputs``."""

    def __init__(self, timeframes: list[tuple[str, int]], series: CandleSeries,
                 feature_timeframes: set[str], checkpoints: bool = False) -> None:
        super().__init__()
        self._timeframes = timeframes
        self._series = series
        self._feature_timeframes = feature_timeframes
        self._checkpoints = checkpoints

    def expand(self, keyed: beam.PCollection) -> BoundedOutputs:
        regrouped = keyed | "RegroupByHour" >> beam.ParDo(RegroupByHourFn()).with_outputs(
            DEAD_LETTER_TAG, main="hours")
        hours = (regrouped.hours
                 | "GroupHours" >> beam.GroupByKey()
                 | "HourCandles" >> beam.ParDo(HourCandlesFn(self._timeframes)).with_outputs(
                     CANDLES_TAG, PARTIALS_TAG, DEAD_LETTER_TAG, main="ticks"))
        labelled = (hours[PARTIALS_TAG]
                    | "CombineLongWindows" >> beam.CombinePerKey(CandleCombineFn())
                    | "LabelLongWindows" >> beam.ParDo(CandleFromKeyFn(self._timeframes)).with_outputs(
                        DEAD_LETTER_TAG, main="candles"))
        long_windows = labelled.candles | "AsLists" >> beam.Map(lambda candle: [candle])
        candles = (
            (hours[CANDLES_TAG], long_windows)
            | "AllCandleLists" >> beam.Flatten()
            | "KeyBySeries" >> beam.Map(
                lambda block: ((block[0]["exchange"], block[0]["symbol"], block[0]["timeframe"]), block))
            | "GroupSeries" >> beam.GroupByKey()
            | "Sequence" >> beam.ParDo(SequenceGroupedFn(
                self._series, self._timeframes, self._feature_timeframes, self._checkpoints)
            ).with_outputs(CHECKPOINTS_TAG, DEAD_LETTER_TAG, main="candles"))
        dead = ((regrouped[DEAD_LETTER_TAG], hours[DEAD_LETTER_TAG], labelled[DEAD_LETTER_TAG],
                 candles[DEAD_LETTER_TAG]) | "Failures" >> GlobalFlatten())
        return BoundedOutputs(hours.ticks, candles.candles,
                              candles[CHECKPOINTS_TAG] if self._checkpoints else None, dead)
