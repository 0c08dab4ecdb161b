"""The stateful step of a stream's candle series: state cells and timers around ``CandleSeries``.

Windowed combines emit candles per window, in no particular order, and nothing for an empty
window. Features need the opposite: one contiguous, ordered series per key. ``SequenceCandlesFn``
turns the first into the second in the global window: it buffers final candles until the
watermark says every earlier window is complete and lets ``transforms.candle_series`` fill the
gaps, compute the features incrementally and own each candle's ``revision``. ``OrderedListState``
would do the buffering, but Dataflow Runner v2 does not support it for Python, so the buffer is a
bag sorted there. A bounded run has no such step: ``transforms.bounded_candles`` flushes each
whole series at once.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (BagStateSpec, ReadModifyWriteStateSpec, TimerSpec,
                                              on_timer)
from apache_beam.utils.timestamp import Timestamp

# SeriesEntry too: the SERIES state of jobs before the split pickled both classes under this
# module's name, and `--update` must still read it.
from transforms.candle_series import CandleSeries, SeriesEntry, SeriesState, split_series  # noqa: F401
from transforms.dead_letter import DEAD_LETTER_TAG, dead_letter, dead_letter_on_error

STAGE_SEQUENCE = "sequence"
STAGE_FEATURES = "features"


def drain(series: CandleSeries) -> Iterator[beam.pvalue.TaggedOutput]:
    """Moves what ``series`` piled up to Beam: its counts to metrics (namespace ``candles``), the
    candles whose features failed to dead letters (the candles themselves went out with NULL
    features)."""
    for name, count in series.counts.items():
        Metrics.counter("candles", name).inc(count)
    series.counts.clear()
    failures, series.failures = series.failures, []
    for reason, candles in failures:
        yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter(STAGE_FEATURES, reason, candles))


class SequenceCandlesFn(beam.DoFn):
    """Keyed by (exchange, symbol, timeframe); candles in, ordered candle rows with features out.
    A stream's: each window is released when the watermark passes its end."""

    PENDING = BagStateSpec("pending", PickleCoder())  # final candles the watermark has not released
    SERIES = ReadModifyWriteStateSpec("series", PickleCoder())  # SeriesState of the key
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)  # end of the next window to release or fill
    FLUSH_AT = ReadModifyWriteStateSpec("flush_at", PickleCoder())  # when FLUSH is set (µs)
    # Revisions already used by provisional panes of windows not yet in the series: {start: rev}
    EARLY_REVISIONS = ReadModifyWriteStateSpec("early_revisions", PickleCoder())

    def __init__(self, series: CandleSeries) -> None:
        if series.bounded:
            raise ValueError("a bounded run sequences whole series (bounded_candles.SequenceGroupedFn)")
        self._series = series

    @dead_letter_on_error(STAGE_SEQUENCE)
    def process(self, element: tuple[tuple[str, str, str], Any],
                pending: Any = beam.DoFn.StateParam(PENDING),
                series_state: Any = beam.DoFn.StateParam(SERIES),
                flush: Any = beam.DoFn.TimerParam(FLUSH),
                flush_at: Any = beam.DoFn.StateParam(FLUSH_AT),
                early_revisions: Any = beam.DoFn.StateParam(EARLY_REVISIONS)) -> Iterator[Any]:
        _, candle = element
        series: SeriesState | None = series_state.read()
        if isinstance(candle, SeriesState):  # a backfill's checkpoint (transforms.checkpoint)
            if series is None:  # a series this job already began keeps going as it is
                series_state.write(candle)
                length = self._series.length_us(candle.history[-1].row["timeframe"])
                self._wake_at(candle.next_start_us + length, flush, flush_at)
            return
        if not candle["is_final"]:  # provisional pane of a long window: straight out
            revisions = early_revisions.read() or {}
            row = self._series.provisional(candle, revisions)
            early_revisions.write(revisions)
            yield row
            return
        if series and candle["timestamp_in"] < series.next_start_us:
            yield from self._series.correct(series, candle)
            series_state.write(series)
            yield from drain(self._series)
            return
        pending.add(candle)
        if series and candle["last_tick_time"]:
            series.last_trade_us = max(series.last_trade_us, candle["last_tick_time"])
            series_state.write(series)
        self._wake_at(candle["window_end"], flush, flush_at)

    @staticmethod
    def _wake_at(release_at: int, flush: Any, flush_at: Any) -> None:
        """Sets the FLUSH timer to ``release_at`` unless it is due earlier already."""
        current = flush_at.read()
        if current is None or release_at < current:
            flush.set(Timestamp(micros=release_at))
            flush_at.write(release_at)

    @on_timer(FLUSH)
    @dead_letter_on_error(STAGE_SEQUENCE)
    def release(self, pending: Any = beam.DoFn.StateParam(PENDING),
                series_state: Any = beam.DoFn.StateParam(SERIES),
                flush: Any = beam.DoFn.TimerParam(FLUSH),
                flush_at: Any = beam.DoFn.StateParam(FLUSH_AT),
                early_revisions: Any = beam.DoFn.StateParam(EARLY_REVISIONS),
                fired_at: Timestamp = beam.DoFn.TimestampParam) -> Iterator[Any]:
        """Emits the pending candles the watermark has passed, in order, with the gaps between."""
        early = early_revisions.read() or {}
        flush_at.clear()
        waiting = list(pending.read())
        pending.clear()
        released = self._series.release(series_state.read(), waiting, fired_at.micros, early)
        for candle in released.later:
            pending.add(candle)
        if released.series is None:
            series_state.clear()
        else:
            series_state.write(released.series)
        if released.wake_at is not None:
            flush.set(Timestamp(micros=released.wake_at))
            flush_at.write(released.wake_at)
        if early:
            early_revisions.write(early)
        else:
            early_revisions.clear()
        for rows in split_series(released.rows):
            yield from rows
        yield from drain(self._series)


class SequenceCandles(beam.PTransform):
    """Candle panes of every timeframe → ordered candle rows with gaps, revisions and features.

    ``checkpoints``: (series key, SeriesState) a backfill left (transforms.checkpoint), installed
    before the first candle so the series go on from there.
    """

    def __init__(self, fn: SequenceCandlesFn,
                 checkpoints: Sequence[tuple[tuple[str, str, str], SeriesState]] = ()) -> None:
        super().__init__()
        self._fn = fn
        self._checkpoints = list(checkpoints)

    def expand(self, candles: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        """Returns the candle rows (main output ``rows``) and ``dead_letter``."""
        keyed = (candles
                 | "GlobalWindow" >> beam.WindowInto(window.GlobalWindows())
                 | "KeyBySeries" >> beam.Map(lambda c: ((c["exchange"], c["symbol"], c["timeframe"]), c))
                 .with_output_types(Tuple[Tuple[str, str, str], Any]))
        if self._checkpoints:
            seeds = (candles.pipeline
                     | "Checkpoints" >> beam.Create(self._checkpoints)
                     .with_output_types(Tuple[Tuple[str, str, str], Any]))
            keyed = (keyed, seeds) | "WithCheckpoints" >> beam.Flatten()
        return keyed | "Sequence" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER_TAG, main="rows")
