"""The candle series of one (exchange, symbol, timeframe): order, gap candles, revisions, features.

Plain Python, no Beam: the stateful DoFns (``transforms.sequencer`` for a stream,
``transforms.bounded_candles`` for a bounded run) read a key's ``SeriesState`` and its waiting
candles from their state cells, hand them to ``CandleSeries`` and write back what it returns.
``CandleSeries`` holds the rules (timeframes, gaps, idle timeout, lateness), never a key's data,
so one instance serves every key.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from transforms import features
from transforms.candle_accumulator import UNCHECKED
from transforms.candles import PANE_INDEX
from transforms.feature_state import initial_state, step
from transforms.features import FEATURE_NAMES

FEATURE_HISTORY = 40  # candles of history kept per key: covers every feature's look-back (≤ 34)
NO_FEATURES = dict.fromkeys(FEATURE_NAMES)
END_OF_TIME_US = 9_223_371_950_454_774_999  # the global window's end (Beam's, in µs)
SERIES_BREAK: Any = object()  # between the rows of two series of one key (it went idle between)


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


@dataclass
class Release:
    """What releasing a key's waiting candles leaves: rows out, state to keep, when to wake."""

    rows: list[Any]  # output rows in order, SERIES_BREAK between two series
    series: Optional[SeriesState]  # None: the key is forgotten
    later: list[dict[str, Any]]  # candles whose window has not ended yet: still waiting
    wake_at: Optional[int] = None  # µs: next release (a stream only)


def split_series(released: list[Any]) -> list[list[dict[str, Any]]]:
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


def _facts_on_gap(row: dict[str, Any], candle: dict[str, Any]) -> dict[str, Any]:
    """A candle without trades (``row``: prices of the previous close) with the disconnect
    markers and missing ranges its window holds (``candle``: the window's combined facts)."""
    return dict(row, is_partial=bool(row["is_partial"] or candle["is_partial"]),
                missing_trades=candle["missing_trades"], is_complete=candle["is_complete"],
                **{UNCHECKED: candle.get(UNCHECKED, False), PANE_INDEX: candle.get(PANE_INDEX, 0)})


class CandleSeries:
    """The rules of every series; the methods take and update one key's ``SeriesState``.

    ``bounded`` (file replay): everything is released in one flush at the end of input. That
    flush is not a moment of the data: trailing gap candles stop at ``end_us`` (the requested
    range's end), or without one at each series' last candle with trades, so a bounded run emits
    no candle after its input; features are computed on each whole series at once.

    ``counts`` (gap_candles, corrected_candles, corrections_beyond_history) and ``failures``
    (reason, candles) of features that could not be computed pile up until the caller takes them.
    """

    def __init__(self, timeframe_seconds: dict[str, int], feature_timeframes: set[str],
                 gap_candles: bool, idle_timeout_seconds: int, allowed_lateness_seconds: int,
                 bounded: bool, job_start_us: int, end_us: Optional[int] = None) -> None:
        self.job_start_us = job_start_us
        self._timeframe_us = {label: s * 1_000_000 for label, s in timeframe_seconds.items()}
        self._feature_timeframes = set(feature_timeframes)
        self._gap_candles = gap_candles
        self._idle_us = idle_timeout_seconds * 1_000_000
        self._lateness_us = allowed_lateness_seconds * 1_000_000
        self.bounded = bounded
        self._end_us = end_us
        self.counts: Counter[str] = Counter()
        self.failures: list[tuple[str, Any]] = []

    def length_us(self, timeframe: str) -> int:
        return self._timeframe_us[timeframe]

    def history_limit(self, length_us: int) -> int:
        """Candles a key keeps: the features' look-back, or what late corrections can reach."""
        return max(FEATURE_HISTORY, math.ceil(2 * self._lateness_us / length_us) + 2)

    def provisional(self, candle: dict[str, Any], revisions: dict[int, int]) -> dict[str, Any]:
        """The row of a provisional pane of a long window, not yet in the series; ``revisions``
        (revisions used by the window's earlier panes, by start) is updated."""
        start = candle["timestamp_in"]
        revisions[start] = revision = revisions.get(start, -1) + 1
        return self._loose_row(candle, revision)

    def _loose_row(self, candle: dict[str, Any], revision: int) -> dict[str, Any]:
        row = dict(candle, revision=revision, job_start=self.job_start_us, **NO_FEATURES)
        del row[PANE_INDEX]
        row.pop(UNCHECKED, None)
        return row

    def flush(self, candles: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """A bounded run's end-of-input release of a key's candles: the rows of each series (a
        key idle past the timeout starts a new one), features filled."""
        released = self.release(None, candles, END_OF_TIME_US, {}).rows
        return [self._with_batch_features(rows) for rows in split_series(released)]

    def release(self, series: Optional[SeriesState], candles: Iterable[dict[str, Any]],
                now_us: int, early: dict[int, int]) -> Release:
        """Emits the waiting candles whose window ended by ``now_us`` (the watermark), in order,
        with the gaps between; ``early`` (revisions of provisional panes) is updated."""
        waiting = sorted(candles, key=lambda c: (c["timestamp_in"], c[PANE_INDEX]))
        later = [c for c in waiting if c["window_end"] > now_us]
        rows: list[Any] = []
        for candle in (c for c in waiting if c["window_end"] <= now_us):
            if series and candle["timestamp_in"] < series.next_start_us:
                rows += self.correct(series, candle)
                continue
            if series and candle["timestamp_in"] >= series.last_trade_us + self._idle_us:
                # The key went silent in between: gaps up to the idle timeout, then a new series,
                # as a stream's forget timer would have done.
                rows += self.fill_gaps(series, candle["timestamp_in"], early, trailing=True)
                series = None
                rows.append(SERIES_BREAK)
            starts = series is None
            if starts:
                if not candle["trades"]:
                    continue  # a marker or range before any trade: no price to build a candle on
                series = SeriesState(next_start_us=candle["timestamp_in"],
                                     last_trade_us=candle["last_tick_time"],
                                     feature_state=self._initial_features(candle["timeframe"]))
                candle = dict(candle, is_partial=True)  # first candle of the key since start
            rows += self.fill_gaps(series, candle["timestamp_in"], early)
            if not candle["trades"]:  # only disconnect markers or missing ranges in this window
                candle = _facts_on_gap(gap_candle(series.history[-1].row, candle["timestamp_in"],
                                                 self._timeframe_us[candle["timeframe"]]), candle)
            rows.append(self.append(series, candle, early, series_start=starts))
        if series is None:  # nothing released, or the key went idle and nothing started anew
            return Release(rows, None, later)
        rows += self.fill_gaps(series, self._trailing_until(series, now_us), early, trailing=True)
        idle_at = series.last_trade_us + self._idle_us
        # Forget a silent key, but not while a late pane may still correct its last candle.
        forget_at = max(idle_at, series.next_start_us + self._lateness_us)
        if not later and now_us >= forget_at:
            return Release(rows, None, later)
        if self.bounded:
            return Release(rows, series, later)
        # Wake up for the next pending candle, the next window to fill, or to forget an idle key.
        gap_end = series.next_start_us + self._timeframe_us[series.history[-1].row["timeframe"]]
        wake_ups = [later[0]["window_end"]] if later else []
        if self._gap_candles and gap_end <= idle_at:
            wake_ups.append(gap_end)
        elif forget_at > now_us:
            wake_ups.append(forget_at)
        return Release(rows, series, later, min(wake_ups))

    def _trailing_until(self, series: SeriesState, now_us: int) -> int:
        """Until when trailing gap candles run: the watermark in a stream; in a bounded run the
        range's end, or the end of the series' last candle (no trailing gaps)."""
        if not self.bounded:
            return now_us
        return self._end_us if self._end_us is not None else series.next_start_us

    def _initial_features(self, timeframe: str) -> Any:
        """The incremental feature state, for a stream; a bounded series is done in one go."""
        if self.bounded or timeframe not in self._feature_timeframes:
            return None
        return initial_state()

    def _feature_failed(self, error: Exception, candles: Any) -> None:
        self.failures.append((f"{type(error).__name__}: {error}; the candle is written with NULL "
                              f"features", candles))

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

    def fill_gaps(self, series: SeriesState, until_us: int, early: dict[int, int],
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
            self.counts["gap_candles"] += 1
            unknown = series.history[-1].feed_unknown
            yield self.append(series, gap_candle(series.history[-1].row, start, length, unknown), early,
                              made_gap=True)

    def append(self, series: SeriesState, candle: dict[str, Any], early: dict[int, int],
               made_gap: bool = False, series_start: bool = False) -> dict[str, Any]:
        """Adds a final candle at the end of the series and returns its output row; its revision
        follows those its provisional panes used (``early``, updated). The first candle of a
        series is never complete: the trades before the job started are unknown."""
        state_before = series.feature_state
        revision = early.pop(candle["timestamp_in"], -1) + 1
        row = dict(candle, is_final=True, revision=revision, job_start=self.job_start_us)
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
            return NO_FEATURES
        series.feature_state, values = self._step(series.feature_state, row)
        return values

    def _step(self, state: Any, row: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """``step`` of the features; a candle it refuses keeps the state as it was, with NULL features."""
        try:
            return step(state, row, self._timeframe_us[row["timeframe"]] / 1_000_000)
        except (ValueError, TypeError, ArithmeticError) as error:
            self._feature_failed(error, row)
            return state, NO_FEATURES

    def correct(self, series: SeriesState, candle: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """A late pane for an emitted window: replace it, recompute what depends on it, re-emit
        every row that changed with revision+1."""
        start = candle["timestamp_in"]
        index = next((i for i, e in enumerate(series.history) if e.row["timestamp_in"] == start), None)
        if index is None:  # older than the history (lateness > history): emit it alone
            self.counts["corrections_beyond_history"] += 1
            yield self._loose_row(candle, 1)
            return
        if candle[PANE_INDEX] <= series.history[index].pane_index:
            return  # an older pane of a window already corrected by a newer one
        self.counts["corrected_candles"] += 1
        series.history[index].pane_index = candle[PANE_INDEX]
        entries = series.history[index:]
        old_rows = [e.row for e in entries]
        first = entries[0]
        if candle["trades"]:
            replaced = dict(candle, is_final=True, is_gap=False, job_start=self.job_start_us,
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
