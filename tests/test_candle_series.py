"""``CandleSeries`` on its own: order, gap candles, revisions, corrections, features, expiry.

No pipeline: the state a DoFn would keep is a plain ``SeriesState`` passed in and out, and the
clock is the ``now_us`` each release is given.
"""
from __future__ import annotations

from typing import Any, Optional

import pytest
from apache_beam.transforms import window

from transforms.bounded_candles import SequenceGroupedFn
from transforms.candle_accumulator import UNCHECKED
from transforms.candle_series import (END_OF_TIME_US, SERIES_BREAK, CandleSeries, SeriesState,
                                      split_series)
from transforms.candles import PANE_INDEX
from transforms.sequencer import SequenceCandlesFn

S = 1_000_000
MINUTE = 60 * S
T0 = 1_700_000_040 * S  # a minute boundary
JOB_START = 42


def candle(minute: int, close: float, pane: int = 0, trades: int = 3, is_final: bool = True,
           **overrides: Any) -> dict[str, Any]:
    """A 1m candle as the windowed combine emits it (a venue that cannot count missing trades)."""
    start = T0 + minute * MINUTE
    row = {"exchange": "binance", "symbol": "BTC-USDT", "native_symbol": "BTCUSDT",
           "timeframe": "1m", "timestamp_in": start, "window_end": start + MINUTE,
           "open": close, "high": close + 1, "low": close - 1, "close": close,
           "volume": 2.0, "quote_volume": 2 * close, "trades": trades, "vwap": close,
           "buy_volume": 1.0, "sell_volume": 1.0, "buy_trades": 1, "sell_trades": trades - 1,
           "first_trade_id": "1", "last_trade_id": str(trades),
           "first_tick_time": start + S if trades else None,
           "last_tick_time": start + 50 * S if trades else None,
           "is_partial": False, "missing_trades": None, "is_complete": False, "is_gap": False,
           "is_final": is_final, PANE_INDEX: pane, UNCHECKED: False}
    row.update(overrides)
    return row


def series_rules(bounded: bool = False, features: bool = False, gaps: bool = True,
                 idle_seconds: int = 3600, lateness_seconds: int = 120,
                 end_us: Optional[int] = None) -> CandleSeries:
    return CandleSeries({"1m": 60}, {"1m"} if features else set(), gaps, idle_seconds,
                        lateness_seconds, bounded, JOB_START, end_us)


def released(rules: CandleSeries, series: Optional[SeriesState], candles: list[dict[str, Any]],
             now_us: int, early: Optional[dict[int, int]] = None):
    result = rules.release(series, candles, now_us, {} if early is None else early)
    return result, [row for row in result.rows if row is not SERIES_BREAK]


def minutes(rows: list[dict[str, Any]]) -> list[int]:
    return [(row["timestamp_in"] - T0) // MINUTE for row in rows]


def test_release_orders_candles_fills_gaps_and_waits_for_open_windows() -> None:
    rules = series_rules()
    result, rows = released(rules, None, [candle(3, 103), candle(0, 100), candle(5, 105)],
                            now_us=T0 + 4 * MINUTE)
    assert minutes(rows) == [0, 1, 2, 3]
    assert [r["is_gap"] for r in rows] == [False, True, True, False]
    assert [r["close"] for r in rows] == [100, 100, 100, 103]
    assert rows[1]["volume"] == 0.0 and rows[1]["vwap"] is None and rows[1]["trades"] == 0
    assert all(r["revision"] == 0 and r["job_start"] == JOB_START and r["is_final"] for r in rows)
    assert all(PANE_INDEX not in r and UNCHECKED not in r for r in rows)
    assert rows[0]["is_partial"] and not rows[0]["is_complete"]  # the series' first candle
    assert minutes(result.later) == [5]
    assert result.series.next_start_us == T0 + 4 * MINUTE
    assert result.wake_at == T0 + 5 * MINUTE  # the still-open window ends, as would the next gap
    assert rules.counts == {"gap_candles": 2}


def test_a_later_release_goes_on_with_trailing_gaps_up_to_the_watermark() -> None:
    rules = series_rules()
    first, _ = released(rules, None, [candle(0, 100)], now_us=T0 + MINUTE)
    second, rows = released(rules, first.series, [], now_us=T0 + 3 * MINUTE)
    assert minutes(rows) == [1, 2] and all(r["is_gap"] for r in rows)
    assert second.wake_at == T0 + 4 * MINUTE


def test_without_gap_candles_the_series_skips_empty_windows() -> None:
    rules = series_rules(gaps=False)
    result, rows = released(rules, None, [candle(0, 100), candle(4, 104)], now_us=T0 + 5 * MINUTE)
    assert minutes(rows) == [0, 4]
    assert result.wake_at == T0 + 4 * MINUTE + 50 * S + 3600 * S  # to forget the key once idle


def test_a_key_expires_once_idle_and_past_the_lateness() -> None:
    rules = series_rules(gaps=False, idle_seconds=300, lateness_seconds=60)
    kept, _ = released(rules, None, [candle(0, 100)], now_us=T0 + MINUTE)
    idle_at = T0 + 50 * S + 300 * S
    assert kept.series is not None and kept.wake_at == idle_at
    expired, rows = released(rules, kept.series, [], now_us=idle_at)
    assert expired.series is None and rows == [] and expired.wake_at is None


def test_gap_candles_stop_at_the_idle_timeout_and_a_new_series_starts() -> None:
    rules = series_rules(bounded=True, idle_seconds=180)
    series = rules.flush([candle(0, 100), candle(10, 110)])
    assert [minutes(rows) for rows in series] == [[0, 1, 2], [10]]
    assert series[1][0]["is_partial"] and not series[1][0]["is_complete"]


def test_provisional_panes_take_revisions_the_final_candle_follows() -> None:
    rules = series_rules()
    revisions: dict[int, int] = {}
    early = [rules.provisional(candle(0, 100 + p, pane=p, is_final=False), revisions) for p in (0, 1)]
    assert [r["revision"] for r in early] == [0, 1]
    assert all(r["sma_5"] is None and PANE_INDEX not in r for r in early)
    _, rows = released(rules, None, [candle(0, 102, pane=2)], now_us=T0 + MINUTE, early=revisions)
    assert rows[0]["revision"] == 2 and revisions == {}


def test_a_correction_re_emits_the_candle_and_the_gap_candles_after_it() -> None:
    rules = series_rules()
    result, _ = released(rules, None, [candle(0, 100), candle(3, 103)], now_us=T0 + 4 * MINUTE)
    series = result.series
    rows = list(rules.correct(series, candle(0, 90, pane=1)))
    assert minutes(rows) == [0, 1, 2]  # the gaps carry the new close; minute 3 is unchanged
    assert [r["close"] for r in rows] == [90, 90, 90]
    assert [r["revision"] for r in rows] == [1, 1, 1]
    assert rows[0]["is_partial"]  # still the series' first candle
    assert list(rules.correct(series, candle(0, 80, pane=1))) == []  # not newer than applied
    assert rules.counts["corrected_candles"] == 1


def test_a_correction_older_than_the_history_goes_out_alone() -> None:
    rules = series_rules()
    result, _ = released(rules, None, [candle(100, 100)], now_us=T0 + 101 * MINUTE)
    [row] = rules.correct(result.series, candle(0, 50, pane=1))
    assert row["revision"] == 1 and row["close"] == 50 and PANE_INDEX not in row
    assert rules.counts["corrections_beyond_history"] == 1


def test_a_correction_recomputes_the_features_after_it() -> None:
    rules = series_rules(features=True)
    result, before = released(rules, None, [candle(m, 100 + m) for m in range(8)],
                              now_us=T0 + 8 * MINUTE)
    rows = list(rules.correct(result.series, candle(2, 300, pane=1)))
    assert minutes(rows) == list(range(2, 8))
    assert rows[-1]["ema_5"] != before[-1]["ema_5"] and rows[-2]["sma_5"] != before[-2]["sma_5"]
    assert all(r["revision"] == 1 for r in rows)


def test_history_is_bounded_by_the_look_back_or_the_lateness() -> None:
    rules = series_rules(lateness_seconds=3600)
    assert rules.history_limit(MINUTE) == 122
    result, _ = released(rules, None, [candle(m, 100) for m in range(200)], now_us=T0 + 200 * MINUTE)
    assert len(result.series.history) == 122


def test_a_bounded_flush_has_no_candle_after_its_input_unless_given_an_end() -> None:
    assert minutes(series_rules(bounded=True).flush([candle(0, 100)])[0]) == [0]
    ended = series_rules(bounded=True, end_us=T0 + 3 * MINUTE).flush([candle(0, 100)])
    assert minutes(ended[0]) == [0, 1, 2]


def test_bounded_batch_features_equal_the_streaming_incremental_ones() -> None:
    candles = [candle(m, 100 + (m * 7) % 5) for m in range(0, 30) if m % 9 != 4]
    [batch] = series_rules(bounded=True, features=True).flush([dict(c) for c in candles])
    _, streamed = released(series_rules(features=True), None, [dict(c) for c in candles],
                           now_us=T0 + 30 * MINUTE)
    assert minutes(batch) == minutes(streamed)
    for bounded_row, stream_row in zip(batch, streamed):
        assert bounded_row.keys() == stream_row.keys()
        for name, value in stream_row.items():
            assert bounded_row[name] == (pytest.approx(value, nan_ok=True)
                                         if isinstance(value, float) else value), name


def test_a_candle_the_features_refuse_goes_out_with_null_features_and_a_failure() -> None:
    rules = series_rules(features=True)
    _, rows = released(rules, None, [candle(0, 100), candle(1, 101, volume="lots")],
                       now_us=T0 + 2 * MINUTE)
    assert rows[1]["sma_5"] is None and rows[1]["volume"] == "lots"
    [(reason, payload)] = rules.failures
    assert reason.startswith("ValueError") and payload["timestamp_in"] == T0 + MINUTE


def test_split_series_cuts_at_each_break() -> None:
    assert split_series([1, SERIES_BREAK, 2, 3]) == [[1], [2, 3]]
    assert split_series([]) == [[]]


def test_end_of_time_is_the_global_windows_end() -> None:
    assert END_OF_TIME_US == window.GlobalWindow().max_timestamp().micros


def test_each_dofn_takes_only_the_series_of_its_mode() -> None:
    with pytest.raises(ValueError):
        SequenceCandlesFn(series_rules(bounded=True))
    with pytest.raises(ValueError):
        SequenceGroupedFn(series_rules(bounded=False), [("1m", 60)], set(), False)
