"""Candle series per (exchange, symbol, timeframe): order, gap candles, revisions, HFT features.

Windowed combines emit candles per window, in no particular order, and nothing for an empty
window. Features need the opposite: one contiguous, ordered series per key. ``SequenceCandlesFn``
turns the first into the second in the global window: it buffers final candles until the
watermark says every earlier window is complete, fills empty intervals with gap candles, computes
the features incrementally (bounded state, O(1) per candle), and owns each candle's ``revision``
so a late correction is re-emitted with revision+1 together with the later rows whose features it
changes. ``OrderedListState`` would do the buffering, but Dataflow Runner v2 does not support it
for Python, so the buffer is a bag sorted here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (BagStateSpec, ReadModifyWriteStateSpec, TimerSpec,
                                              on_timer)
from apache_beam.utils.timestamp import Timestamp

from transforms import features
from transforms.candles import PANE_INDEX, UNCHECKED
from transforms.dead_letter import DEAD_LETTER_TAG, dead_letter, dead_letter_on_error
from transforms.feature_state import initial_state, step
from transforms.features import FEATURE_NAMES

FEATURE_HISTORY = 40  # candles of history kept per key: covers every feature's look-back (≤ 34)
_NO_FEATURES = dict.fromkeys(FEATURE_NAMES)
END_OF_TIME_US = window.GlobalWindow().max_timestamp().micros
SERIES_BREAK: Any = object()  # between the rows of two series of one key (it went idle between)
STAGE_SEQUENCE = "sequence"
STAGE_FEATURES = "features"


@dataclass
class SeriesEntry:
    """One emitted candle of the series, with what is needed to re-emit or recompute it."""

    row: dict[str, Any]
    state_before: Any  # feature_state.FeatureState before this candle (None: no features)
    pane_index: int  # newest pane applied: an older pane arriving later must not win
    feed_unknown: bool = False  # after this candle the feed was down, not checked since
    made_gap: bool = False  # a gap candle the sequencer made (no element of its own)
    series_start: bool = False  # the first candle of its series


@dataclass
class SeriesState:
    """Everything a key remembers between candles; bounded by FEATURE_HISTORY + lateness."""

    next_start_us: int  # open time of the next window the series expects
    last_trade_us: int  # newest tick seen: drives the idle timeout
    history: list[SeriesEntry] = field(default_factory=list)
    feature_state: Any = None

    @property
    def last_close(self) -> float:
        return self.history[-1].row["close"]


def _split_series(released: list[Any]) -> list[list[dict[str, Any]]]:
    """Released rows → one list per series (SERIES_BREAK separates them)."""
    segments: list[list[dict[str, Any]]] = [[]]
    for row in released:
        if row is SERIES_BREAK:
            segments.append([])
        else:
            segments[-1].append(row)
    return segments


def gap_candle(previous: dict[str, Any], start_us: int, length_us: int,
               feed_unknown: bool = False) -> dict[str, Any]:
    """An interval without trades: O=H=L=C=previous close, zero volume, vwap NULL. Complete when
    the venue can tell and the feed was up (``feed_unknown``: a disconnect before it that no
    missing range has covered yet)."""
    close = previous["close"]
    missing = None if previous.get("missing_trades") is None else 0
    return {
        "exchange": previous["exchange"], "symbol": previous["symbol"],
        "native_symbol": previous["native_symbol"], "timeframe": previous["timeframe"],
        "timestamp_in": start_us, "window_end": start_us + length_us,
        "open": close, "high": close, "low": close, "close": close,
        "volume": 0.0, "quote_volume": 0.0, "trades": 0, "vwap": None,
        "buy_volume": 0.0, "sell_volume": 0.0, "buy_trades": 0, "sell_trades": 0,
        "first_trade_id": None, "last_trade_id": None, "first_tick_time": None,
        "last_tick_time": None, "is_gap": True, "is_partial": False, "is_final": True,
        "missing_trades": missing, "is_complete": missing is not None and not feed_unknown,
    }


class SequenceCandlesFn(beam.DoFn):
    """Keyed by (exchange, symbol, timeframe); candles in, ordered candle rows with features out.

    ``bounded`` (file replay): all input arrives before the watermark moves, so one flush at the
    end of time replaces the per-window timer chain a stream needs. That flush is not a moment of
    the data: trailing gap candles stop at ``end_us`` (the requested range's end), or without one
    at each series' last candle with trades, so a bounded run emits no candle after its input.
    """

    PENDING = BagStateSpec("pending", PickleCoder())  # final candles the watermark has not released
    SERIES = ReadModifyWriteStateSpec("series", PickleCoder())  # SeriesState of the key
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)  # end of the next window to release or fill
    FLUSH_AT = ReadModifyWriteStateSpec("flush_at", PickleCoder())  # when FLUSH is set (µs)
    # Revisions already used by provisional panes of windows not yet in the series: {start: rev}
    EARLY_REVISIONS = ReadModifyWriteStateSpec("early_revisions", PickleCoder())

    def __init__(self, timeframe_seconds: dict[str, int], feature_timeframes: set[str],
                 gap_candles: bool, idle_timeout_seconds: int, allowed_lateness_seconds: int,
                 bounded: bool, job_start_us: int, end_us: Optional[int] = None) -> None:
        self._job_start_us = job_start_us
        self._timeframe_us = {label: s * 1_000_000 for label, s in timeframe_seconds.items()}
        self._feature_timeframes = set(feature_timeframes)
        self._gap_candles = gap_candles
        self._idle_us = idle_timeout_seconds * 1_000_000
        self._lateness_us = allowed_lateness_seconds * 1_000_000
        self._bounded = bounded
        self._end_us = end_us
        self.corrections = Metrics.counter("candles", "corrected_candles")
        self.gaps = Metrics.counter("candles", "gap_candles")
        self.too_old = Metrics.counter("candles", "corrections_beyond_history")
        # Candles whose features could not be computed, since the last flush: each becomes a
        # dead letter while the candle itself goes out with NULL features.
        self._feature_failures: list[dict[str, Any]] = []

    def history_limit(self, length_us: int) -> int:
        """Candles a key keeps: the features' look-back, or what late corrections can reach."""
        return max(FEATURE_HISTORY, math.ceil(2 * self._lateness_us / length_us) + 2)

    @dead_letter_on_error(STAGE_SEQUENCE)
    def process(self, element: tuple[tuple[str, str, str], dict[str, Any]],
                pending: Any = beam.DoFn.StateParam(PENDING),
                series_state: Any = beam.DoFn.StateParam(SERIES),
                flush: Any = beam.DoFn.TimerParam(FLUSH),
                flush_at: Any = beam.DoFn.StateParam(FLUSH_AT),
                early_revisions: Any = beam.DoFn.StateParam(EARLY_REVISIONS)) -> Iterator[dict[str, Any]]:
        _, candle = element
        series: SeriesState | None = series_state.read()
        if isinstance(candle, SeriesState):  # a backfill's checkpoint (transforms.checkpoint)
            if series is None:  # a series this job already began keeps going as it is
                series_state.write(candle)
                length = self._timeframe_us[candle.history[-1].row["timeframe"]]
                self._wake_at(candle.next_start_us + length, flush, flush_at)
            return
        start = candle["timestamp_in"]
        if not candle["is_final"]:  # provisional pane of a long window: straight out
            revisions = early_revisions.read() or {}
            revisions[start] = revision = revisions.get(start, -1) + 1
            early_revisions.write(revisions)
            row = dict(candle, revision=revision, job_start=self._job_start_us, **_NO_FEATURES)
            del row[PANE_INDEX]
            row.pop(UNCHECKED, None)
            yield row
            return
        if series and start < series.next_start_us:
            yield from self._correct(series, candle)
            series_state.write(series)
            yield from self.flush_failures()
            return
        pending.add(candle)
        if series and candle["last_tick_time"]:
            series.last_trade_us = max(series.last_trade_us, candle["last_tick_time"])
            series_state.write(series)
        self._wake_at(END_OF_TIME_US if self._bounded else candle["window_end"], flush, flush_at)

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
                fired_at: Timestamp = beam.DoFn.TimestampParam) -> Iterator[dict[str, Any]]:
        early = early_revisions.read() or {}
        released = list(self._release(pending, series_state, flush, flush_at, fired_at.micros, early))
        if early:
            early_revisions.write(early)
        else:
            early_revisions.clear()
        for rows in _split_series(released):
            # A bounded run has each whole series at once: the vectorised feature path.
            yield from self._with_batch_features(rows) if self._bounded else rows
        yield from self.flush_failures()

    def flush_failures(self) -> Iterator[beam.pvalue.TaggedOutput]:
        """The dead letters of candles whose features failed since the last call."""
        failures, self._feature_failures = self._feature_failures, []
        for row in failures:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, row)

    def _feature_failed(self, error: Exception, candles: Any) -> None:
        self._feature_failures.append(dead_letter(
            STAGE_FEATURES, f"{type(error).__name__}: {error}; the candle is written with NULL "
            f"features", candles))

    def flush_series(self, pending: Any, series_state: Any, flush: Any, flush_at: Any
                     ) -> list[list[dict[str, Any]]]:
        """A bounded run's end-of-input release: the rows of each series of the key (a key idle
        past the timeout starts a new one), features filled."""
        released = list(self._release(pending, series_state, flush, flush_at, END_OF_TIME_US, {}))
        return [self._with_batch_features(rows) for rows in _split_series(released)]

    def _release(self, pending: Any, series_state: Any, flush: Any, flush_at: Any,
                 now_us: int, early: dict[int, int]) -> Iterator[dict[str, Any]]:
        """Emits the pending candles the watermark has passed, in order, with the gaps between."""
        flush_at.clear()
        series: SeriesState | None = series_state.read()
        waiting = sorted(pending.read(), key=lambda c: (c["timestamp_in"], c[PANE_INDEX]))
        pending.clear()
        later = [c for c in waiting if c["window_end"] > now_us]
        for candle in (c for c in waiting if c["window_end"] <= now_us):
            if series and candle["timestamp_in"] < series.next_start_us:
                yield from self._correct(series, candle)
                continue
            if series and candle["timestamp_in"] >= series.last_trade_us + self._idle_us:
                # The key went silent in between: gaps up to the idle timeout, then a new series,
                # as a stream's forget timer would have done.
                yield from self._fill_gaps(series, candle["timestamp_in"], early, trailing=True)
                series = None
                yield SERIES_BREAK
            starts = series is None
            if starts:
                if not candle["trades"]:
                    continue  # a marker or range before any trade: no price to build a candle on
                series = SeriesState(next_start_us=candle["timestamp_in"],
                                     last_trade_us=candle["last_tick_time"],
                                     feature_state=self._initial_features(candle["timeframe"]))
                candle = dict(candle, is_partial=True)  # first candle of the key since start
            yield from self._fill_gaps(series, candle["timestamp_in"], early)
            if not candle["trades"]:  # only disconnect markers or missing ranges in this window
                candle = _facts_on_gap(gap_candle(series.history[-1].row, candle["timestamp_in"],
                                                  self._timeframe_us[candle["timeframe"]]), candle)
            yield self._append(series, candle, early, series_start=starts)
        for candle in later:
            pending.add(candle)
        if series is None:  # nothing released, or the key went idle and nothing started anew
            series_state.clear()
            return
        yield from self._fill_gaps(series, self._trailing_until(series, now_us), early, trailing=True)
        idle_at = series.last_trade_us + self._idle_us
        # Forget a silent key, but not while a late pane may still correct its last candle.
        forget_at = max(idle_at, series.next_start_us + self._lateness_us)
        if not later and now_us >= forget_at:
            series_state.clear()
            return
        series_state.write(series)
        if self._bounded:
            return
        # Wake up for the next pending candle, the next window to fill, or to forget an idle key.
        gap_end = series.next_start_us + self._timeframe_us[series.history[-1].row["timeframe"]]
        wake_ups = [later[0]["window_end"]] if later else []
        if self._gap_candles and gap_end <= idle_at:
            wake_ups.append(gap_end)
        elif forget_at > now_us:
            wake_ups.append(forget_at)
        next_flush = min(wake_ups)
        flush.set(Timestamp(micros=next_flush))
        flush_at.write(next_flush)

    def _trailing_until(self, series: SeriesState, now_us: int) -> int:
        """Until when trailing gap candles run: the watermark in a stream; in a bounded run the
        range's end, or the end of the series' last candle (no trailing gaps)."""
        if not self._bounded:
            return now_us
        return self._end_us if self._end_us is not None else series.next_start_us

    def _initial_features(self, timeframe: str) -> Any:
        """The incremental feature state, for a stream; a bounded series is done in one go."""
        if self._bounded or timeframe not in self._feature_timeframes:
            return None
        return initial_state()

    def _with_batch_features(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Fills the feature columns of a whole ordered series with ``compute_features``."""
        if not rows or rows[0]["timeframe"] not in self._feature_timeframes:
            return rows
        try:
            series = {column: np.array([np.nan if r[column] is None else r[column] for r in rows],
                                       dtype=np.float64) for column in features.CANDLE_FIELDS}
            values = features.compute_features(series, self._timeframe_us[rows[0]["timeframe"]] / 1e6)
        except (ValueError, TypeError, ArithmeticError) as error:
            self._feature_failed(error, rows)
            return rows
        for name, column in values.items():
            for row, value in zip(rows, column.tolist()):
                row[name] = None if math.isnan(value) else value
        return rows

    def _fill_gaps(self, series: SeriesState, until_us: int, early: dict[int, int],
                   trailing: bool = False) -> Iterator[dict[str, Any]]:
        """Gap candles for the empty windows before ``until_us`` (trailing: windows that have
        ended by then, while the key is not idle)."""
        if not self._gap_candles or not series.history:
            if series.history and not trailing:
                series.next_start_us = until_us
            return
        previous = series.history[-1].row
        length = self._timeframe_us[previous["timeframe"]]
        while True:
            start = series.next_start_us
            end = start + length
            if trailing:
                if end > until_us or end > series.last_trade_us + self._idle_us:
                    return
            elif start >= until_us:
                return
            self.gaps.inc()
            unknown = series.history[-1].feed_unknown
            yield self._append(series, gap_candle(series.history[-1].row, start, length, unknown), early,
                               made_gap=True)

    def _append(self, series: SeriesState, candle: dict[str, Any], early: dict[int, int],
                made_gap: bool = False, series_start: bool = False) -> dict[str, Any]:
        """Adds a final candle at the end of the series and returns its output row; its revision
        follows those its provisional panes used (``early``, updated). The first candle of a
        series is never complete: the trades before the job started are unknown."""
        state_before = series.feature_state
        revision = early.pop(candle["timestamp_in"], -1) + 1
        row = dict(candle, is_final=True, revision=revision, job_start=self._job_start_us)
        pane_index = row.pop(PANE_INDEX, 0)
        unknown = series.history[-1].feed_unknown if made_gap else bool(row.pop(UNCHECKED, False))
        if series_start:
            row["is_complete"] = False
        row.update(self._features(series, row))
        series.history.append(SeriesEntry(row, state_before, pane_index, unknown, made_gap, series_start))
        length = self._timeframe_us[row["timeframe"]]
        del series.history[:-self.history_limit(length)]
        series.next_start_us = row["timestamp_in"] + length
        if row["last_tick_time"]:
            series.last_trade_us = max(series.last_trade_us, row["last_tick_time"])
        return row

    def _features(self, series: SeriesState, row: dict[str, Any]) -> dict[str, Any]:
        if series.feature_state is None:
            return _NO_FEATURES
        series.feature_state, values = self._step(series.feature_state, row)
        return values

    def _step(self, state: Any, row: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """``step`` of the features; a candle it refuses keeps the state as it was, with NULL features."""
        try:
            return step(state, row, self._timeframe_us[row["timeframe"]] / 1_000_000)
        except (ValueError, TypeError, ArithmeticError) as error:
            self._feature_failed(error, row)
            return state, _NO_FEATURES

    def _correct(self, series: SeriesState, candle: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """A late pane for an emitted window: replace it, recompute what depends on it, re-emit
        every row that changed with revision+1."""
        start = candle["timestamp_in"]
        index = next((i for i, e in enumerate(series.history) if e.row["timestamp_in"] == start), None)
        if index is None:  # older than the history (lateness > history): emit it alone
            self.too_old.inc()
            row = dict(candle, revision=1, job_start=self._job_start_us, **_NO_FEATURES)
            del row[PANE_INDEX]
            row.pop(UNCHECKED, None)
            yield row
            return
        if candle[PANE_INDEX] <= series.history[index].pane_index:
            return  # an older pane of a window already corrected by a newer one
        self.corrections.inc()
        series.history[index].pane_index = candle[PANE_INDEX]
        entries = series.history[index:]
        old_rows = [e.row for e in entries]
        first = entries[0]
        if candle["trades"]:
            replaced = dict(candle, is_final=True, is_gap=False, job_start=self._job_start_us,
                            is_partial=bool(first.row["is_partial"] or candle["is_partial"]))
            del replaced[PANE_INDEX]
        else:  # only late markers or missing ranges: the candle's prices stand, its flags change
            replaced = _facts_on_gap(first.row, candle)
            del replaced[PANE_INDEX]
        first.feed_unknown = bool(replaced.pop(UNCHECKED, False))
        first.made_gap = False
        if first.series_start:
            replaced["is_complete"] = False
        state = first.state_before
        unknown = series.history[index - 1].feed_unknown if index else False
        previous_close = None
        for offset, entry in enumerate(entries):
            base = replaced if offset == 0 else entry.row
            if base["is_gap"] and previous_close is not None:
                base = dict(base, open=previous_close, high=previous_close, low=previous_close,
                            close=previous_close)
            if entry.made_gap:  # the feed state it inherits may have changed
                entry.feed_unknown = unknown
                base = dict(base, is_complete=base.get("missing_trades") is not None and not unknown)
            unknown = entry.feed_unknown
            entry.state_before = state
            row = dict(base)
            if state is not None:
                state, values = self._step(state, row)
                row.update(values)
            previous_close = row["close"]
            if row != old_rows[offset]:
                row["revision"] = old_rows[offset]["revision"] + 1
                entry.row = row
                yield row
        series.feature_state = state
        if candle["last_tick_time"]:
            series.last_trade_us = max(series.last_trade_us, candle["last_tick_time"])


def _facts_on_gap(row: dict[str, Any], candle: dict[str, Any]) -> dict[str, Any]:
    """A candle without trades (``row``: prices of the previous close) with the disconnect
    markers and missing ranges its window holds (``candle``: the window's combined facts)."""
    return dict(row, is_partial=bool(row["is_partial"] or candle["is_partial"]),
                missing_trades=candle["missing_trades"], is_complete=candle["is_complete"],
                **{UNCHECKED: candle.get(UNCHECKED, False), PANE_INDEX: candle.get(PANE_INDEX, 0)})


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
