"""Event-time behaviour of the streaming path with TestStream: watermarks, lateness, gaps, dedup.

Each case drives the same MarketData transform a Pub/Sub job runs, with explicit watermarks, and
checks the candle rows (every revision) that come out.
"""
from __future__ import annotations

import pytest
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Timestamp

from tests.pipeline_helpers import (SECOND_US, T0_US, by_timeframe, message, options,
                                    run_market_data, stamped, tick)

pytestmark = pytest.mark.timeout(120)


def stream() -> TestStream:
    return TestStream().advance_watermark_to(Timestamp(micros=T0_US))


def at(seconds: float) -> int:
    return T0_US + int(seconds * SECOND_US)


def add(test_stream: TestStream, *ticks: dict, disconnects: tuple = ()) -> TestStream:
    return test_stream.add_elements([stamped(message(list(ticks), disconnects))])


def watermark(test_stream: TestStream, seconds: float) -> TestStream:
    return test_stream.advance_watermark_to(Timestamp(micros=at(seconds)))


def test_on_time_candle_has_every_column_right():
    s = stream()
    add(s, tick(1, 100.0, 1.0, at(1), "buy"), tick(2, 105.0, 2.0, at(3), "sell"),
        tick(3, 95.0, 0.5, at(7), "unknown"), tick(4, 101.0, 1.5, at(14.999), "buy"))
    watermark(s, 20)
    rows = run_market_data(s.advance_watermark_to_infinity(), options(), streaming=True)
    [candle] = [c for c in by_timeframe(rows["candles"], "15s") if not c["is_gap"]]
    assert (candle["open"], candle["high"], candle["low"], candle["close"]) == (100.0, 105.0, 95.0, 101.0)
    assert candle["volume"] == pytest.approx(5.0)
    assert candle["quote_volume"] == pytest.approx(100 + 210 + 47.5 + 151.5)
    assert candle["vwap"] == pytest.approx(509.0 / 5.0)
    assert (candle["trades"], candle["buy_trades"], candle["sell_trades"]) == (4, 2, 1)
    assert (candle["buy_volume"], candle["sell_volume"]) == (2.5, 2.0)  # the unknown side in neither
    assert (candle["first_trade_id"], candle["last_trade_id"]) == ("1", "4")
    assert (candle["first_tick_time"], candle["last_tick_time"]) == (at(1), at(14.999))
    assert (candle["timestamp_in"], candle["window_end"]) == (T0_US, at(15))
    assert candle["revision"] == 0 and candle["is_final"] and not candle["is_gap"]
    assert candle["is_partial"]  # the key's first candle since start
    assert len(rows["ticks"]) == 4 and rows["dead_letter"] == []


def test_arrival_order_does_not_matter_and_ties_break_by_id():
    s = stream()
    # Same timestamps for the first two and last two trades: (timestamp, id) decides.
    add(s, tick(11, 102.0, 1.0, at(9), "sell"), tick(10, 101.0, 1.0, at(9), "buy"))
    add(s, tick(9, 99.0, 1.0, at(2), "buy"), tick(8, 98.0, 1.0, at(2), "buy"))
    watermark(s, 20)
    rows = run_market_data(s.advance_watermark_to_infinity(), options(), streaming=True)
    [candle] = [c for c in by_timeframe(rows["candles"], "15s") if not c["is_gap"]]
    assert (candle["open"], candle["close"]) == (98.0, 102.0)
    assert (candle["first_trade_id"], candle["last_trade_id"]) == ("8", "11")
    assert (candle["high"], candle["low"]) == (102.0, 98.0)


def test_trade_on_a_boundary_belongs_to_the_candle_that_starts_there():
    s = stream()
    add(s, tick(1, 100.0, 1.0, at(14.999999)), tick(2, 200.0, 1.0, at(15)))
    watermark(s, 40)
    rows = run_market_data(s.advance_watermark_to_infinity(), options(), streaming=True)
    first, second = by_timeframe(rows["candles"], "15s")[:2]
    assert (first["timestamp_in"], first["close"], first["trades"]) == (T0_US, 100.0, 1)
    assert (second["timestamp_in"], second["open"], second["trades"]) == (at(15), 200.0, 1)


def test_late_tick_within_lateness_revises_every_affected_timeframe_exactly():
    s = stream()
    add(s, tick(1, 100.0, 1.0, at(1)), tick(2, 110.0, 1.0, at(5)))
    add(s, tick(3, 120.0, 1.0, at(62)))
    watermark(s, 70)  # 15s [0,15) and 1m [0,60) are closed and emitted
    add(s, tick(4, 90.0, 2.0, at(6)))  # late by 55 s, within the 60 s allowed lateness
    watermark(s, 400)
    rows = run_market_data(s.advance_watermark_to_infinity(), options(), streaming=True)
    revisions_15s = sorted((c["revision"], c["trades"], c["low"], c["volume"]) for c in rows["candles"]
                           if c["timeframe"] == "15s" and c["timestamp_in"] == T0_US)
    assert revisions_15s == [(0, 2, 100.0, 2.0), (1, 3, 90.0, 4.0)]
    revisions_1m = sorted((c["revision"], c["trades"], c["volume"]) for c in rows["candles"]
                          if c["timeframe"] == "1m" and c["timestamp_in"] == T0_US)
    assert revisions_1m == [(0, 2, 2.0), (1, 3, 4.0)]
    # 5m [0,300) was still open: its one and only row already counts the late tick, once.
    [five] = [c for c in rows["candles"] if c["timeframe"] == "5m" and c["timestamp_in"] == T0_US]
    assert (five["revision"], five["trades"], five["volume"], five["low"]) == (0, 4, 5.0, 90.0)
    assert len(rows["ticks"]) == 4 and rows["dead_letter"] == []


def test_tick_later_than_allowed_lateness_goes_to_dead_letter_not_into_candles():
    s = stream()
    add(s, tick(1, 100.0, 1.0, at(1)))
    add(s, tick(2, 100.0, 1.0, at(200)))
    watermark(s, 300)  # bucket [0,15) closed at 15 + 60 s
    add(s, tick(3, 50.0, 9.0, at(2)))
    rows = run_market_data(s.advance_watermark_to_infinity(), options(), streaming=True)
    [late] = rows["dead_letter"]
    assert late["stage"] == "late" and '"id":"3"' in late["payload"]
    first = [c for c in rows["candles"] if c["timeframe"] == "15s" and c["timestamp_in"] == T0_US]
    assert [(c["revision"], c["trades"]) for c in first] == [(0, 1)]
    assert sorted(t["id"] for t in rows["ticks"]) == ["1", "2"]


def test_empty_intervals_become_gap_candles_carrying_the_previous_close():
    s = stream()
    add(s, tick(1, 100.0, 1.0, at(1)), tick(2, 101.0, 1.0, at(10)))
    add(s, tick(3, 105.0, 1.0, at(50)))
    watermark(s, 70)
    rows = run_market_data(s.advance_watermark_to_infinity(), options(idle_timeout_seconds=60),
                           streaming=True)
    candles = by_timeframe(rows["candles"], "15s")
    assert [(c["timestamp_in"] - T0_US) // SECOND_US for c in candles[:4]] == [0, 15, 30, 45]
    gap = candles[1]
    assert gap["is_gap"] and (gap["open"], gap["high"], gap["low"], gap["close"]) == (101.0,) * 4
    assert (gap["volume"], gap["trades"], gap["vwap"]) == (0.0, 0, None)
    assert candles[2]["is_gap"] and not candles[3]["is_gap"] and candles[3]["open"] == 105.0
    # Trailing gaps stop once the key has been idle for idle_timeout_seconds (60 s after 0:50).
    assert max(c["window_end"] for c in candles) <= at(50 + 60)


def test_no_gap_candles_option():
    s = stream()
    add(s, tick(1, 100.0, 1.0, at(1)))
    add(s, tick(2, 105.0, 1.0, at(50)))
    rows = run_market_data(s.advance_watermark_to_infinity(), options(gap_candles=False), streaming=True)
    assert [c["is_gap"] for c in by_timeframe(rows["candles"], "15s")] == [False, False]


def test_day_boundary_and_4h_alignment():
    day = 86_400
    s = stream()
    add(s, tick(1, 100.0, 1.0, at(4 * 3600 - 0.001)), tick(2, 101.0, 1.0, at(4 * 3600)))
    add(s, tick(3, 102.0, 1.0, at(day - 0.000001)))
    add(s, tick(4, 103.0, 1.0, at(day)))
    rows = run_market_data(s.advance_watermark_to_infinity(), options(gap_candles=False), streaming=True)
    four = by_timeframe(rows["candles"], "4h")
    assert [((c["timestamp_in"] - T0_US) // 3_600_000_000, c["trades"]) for c in four] == \
        [(0, 1), (4, 1), (20, 1), (24, 1)]
    days = by_timeframe(rows["candles"], "24h")
    assert [(c["timestamp_in"], c["window_end"], c["trades"], c["close"]) for c in days] == \
        [(T0_US, at(day), 3, 102.0), (at(day), at(2 * day), 1, 103.0)]


def test_duplicate_deliveries_count_once():
    s = stream()
    first = tick(1, 100.0, 1.0, at(1))
    add(s, first, tick(2, 101.0, 1.0, at(2)))
    add(s, first)  # Pub/Sub redelivery of the same trade
    add(s, tick(3, 102.0, 1.0, at(3)), tick(3, 102.0, 1.0, at(3)))  # duplicated inside one batch
    rows = run_market_data(s.advance_watermark_to_infinity(), options(), streaming=True)
    [candle] = [c for c in by_timeframe(rows["candles"], "15s") if not c["is_gap"]]
    assert (candle["trades"], candle["volume"]) == (3, 3.0)
    assert sorted(t["id"] for t in rows["ticks"]) == ["1", "2", "3"]


def test_many_keys_do_not_mix():
    s = stream()
    symbols = [f"C{i}-USDT" for i in range(12)]
    for exchange_index, exchange in enumerate(("binance", "bybit", "okx")):
        for i, symbol in enumerate(symbols):
            price = 100.0 * (i + 1) + exchange_index
            add(s, tick(1, price, 1.0, at(1), exchange=exchange, symbol=symbol),
                tick(2, price + 1, 2.0, at(5), exchange=exchange, symbol=symbol))
    rows = run_market_data(s.advance_watermark_to_infinity(), options(timeframes="15s,1m"),
                           streaming=True)
    candles = [c for c in by_timeframe(rows["candles"], "1m") if not c["is_gap"]]
    assert len(candles) == 36
    for c in candles:
        i, e = int(c["symbol"][1:].split("-")[0]), ("binance", "bybit", "okx").index(c["exchange"])
        assert (c["open"], c["close"], c["volume"], c["trades"]) == (100.0 * (i + 1) + e,
                                                                      100.0 * (i + 1) + e + 1, 3.0, 2)


def test_disconnect_marks_the_spanning_candle_partial():
    s = stream()
    add(s, tick(1, 100.0, 1.0, at(1)))
    add(s, tick(2, 100.0, 1.0, at(16)),
        disconnects=({"exchange": "binance", "symbol": "BTC-USDT", "timestamp": at(20)},))
    add(s, tick(3, 100.0, 1.0, at(31)))
    rows = run_market_data(s.advance_watermark_to_infinity(), options(timeframes="15s"), streaming=True)
    flags = [(c["timestamp_in"] - T0_US) // SECOND_US for c in by_timeframe(rows["candles"], "15s")
             if c["is_partial"]]
    assert flags == [0, 15]  # the first candle, and the one the disconnect happened in


def test_long_windows_fire_provisional_panes_then_the_final_one():
    s = stream()
    add(s, tick(1, 100.0, 1.0, at(1)))
    s.advance_processing_time(70)  # past the 60 s early-firing cadence
    add(s, tick(2, 101.0, 1.0, at(100)))
    s.advance_processing_time(70)
    add(s, tick(3, 99.0, 1.0, at(200)))
    rows = run_market_data(s.advance_watermark_to_infinity(),
                           options(timeframes="15s,4h", early_firing_seconds=60, gap_candles=False),
                           streaming=True)
    four = [(c["revision"], c["is_final"], c["trades"], c["close"]) for c in rows["candles"]
            if c["timeframe"] == "4h"]
    assert four == [(0, False, 1, 100.0), (1, False, 2, 101.0), (2, True, 3, 99.0)]
    assert all(c["is_final"] for c in rows["candles"] if c["timeframe"] == "15s")


def test_a_key_silent_longer_than_the_idle_timeout_starts_a_new_series_on_both_paths():
    ticks = [tick(1, 100.0, 1.0, at(1)), tick(2, 101.0, 1.0, at(3 * 3600 + 1))]
    s = stream()
    for t in ticks:
        add(s, t)
    streamed = run_market_data(s.advance_watermark_to_infinity(),
                               options(timeframes="15s", idle_timeout_seconds=60), streaming=True)
    bounded = run_market_data([message([t]) for t in ticks],
                              options(timeframes="15s", idle_timeout_seconds=60), streaming=False)
    for rows in (streamed, bounded):
        candles = by_timeframe(rows["candles"], "15s")
        starts = [(c["timestamp_in"] - T0_US) // SECOND_US for c in candles]
        # 0:00, gaps whose windows end before the key is idle (0:01 + 60 s), then 3:00:00 anew.
        assert starts[:5] == [0, 15, 30, 45, 3 * 3600]
        assert [c["is_partial"] for c in candles if not c["is_gap"]] == [True, True]
    streamed_rows = [(c["timestamp_in"], c["is_gap"], c["close"]) for c in by_timeframe(streamed["candles"], "15s")]
    bounded_rows = [(c["timestamp_in"], c["is_gap"], c["close"]) for c in by_timeframe(bounded["candles"], "15s")]
    # Equal up to the end of the data; a bounded run stops there (no range end given), while the
    # stream's watermark goes on and fills the idle timeout's gaps.
    assert streamed_rows[:len(bounded_rows)] == bounded_rows
    assert bounded_rows[-1] == (at(3 * 3600), False, 101.0)
    assert streamed_rows[len(bounded_rows):] == [(at(3 * 3600 + s), True, 101.0) for s in (15, 30, 45)]
