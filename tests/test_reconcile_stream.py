"""The streaming reconciliation (``--reconcile_delay_seconds``) with TestStream: real Binance trades
of the sample day through the streaming MarketData path, each final 1m candle compared with the
klines a loopback Binance API serves in its documented format; failures become dead letters after
bounded retries, never an exception.
"""
from __future__ import annotations

import csv
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Timestamp

from pipelines.options import MarketDataOptions
from pipelines.streaming_pipeline import MarketData
from reconcile.loopback import Answer, Handler, LoopbackVenue, binance_klines
from transforms.dead_letter import DEAD_LETTER_TAG
from transforms.reconcile_candles import MAX_ROUNDS, ATTEMPTS_PER_ROUND, ReconcileCandles, ReconcileCandlesFn
from tests.pipeline_helpers import CollectFn, _Collected, message, options, run_market_data, stamped, tick

pytestmark = pytest.mark.timeout(180)

TRADES = Path(__file__).parent / "data" / "BTCUSDT-trades-2017-08-17.csv"
START_MS = 1_502_942_400_000  # 04:00, the first minute with trades
MINUTE_MS = 60_000
END_MS = START_MS + 5 * MINUTE_MS  # 04:00-04:05: trades in 04:00, 04:02, 04:03, 04:04; none in 04:01


def first_trades() -> list[list[str]]:
    with TRADES.open(newline="") as handle:
        return [row for row in csv.reader(handle) if int(row[4]) < END_MS]


def binance_1m_klines(trades: list[list[str]]) -> list[list[Any]]:
    """Binance's kline arrays of the minutes with trades, summed from its trades file."""
    klines = []
    for minute in range(START_MS, END_MS, MINUTE_MS):
        rows = [r for r in trades if minute <= int(r[4]) < minute + MINUTE_MS]
        if not rows:
            continue
        prices = [Decimal(r[1]) for r in rows]
        volume = sum(Decimal(r[2]) for r in rows)
        klines.append([minute, f"{prices[0]:.8f}", f"{max(prices):.8f}", f"{min(prices):.8f}",
                       f"{prices[-1]:.8f}", f"{volume:.8f}", minute + MINUTE_MS - 1,
                       f"{sum(Decimal(r[3]) for r in rows):.8f}", len(rows), "0", "0", "0"])
    return klines


def run_stream(endpoint: str) -> dict[str, list[dict[str, Any]]]:
    trades = first_trades()
    ticks = [tick(int(r[0]), float(r[1]), float(r[2]), int(r[4]) * 1000,
                  "sell" if r[5] == "True" else "buy") for r in trades]
    stream = (TestStream().advance_watermark_to(Timestamp(micros=START_MS * 1000))
              .add_elements([stamped(message(ticks))])
              .advance_watermark_to_infinity())
    opts = options(timeframes="1m", reconcile_delay_seconds=180, reconcile_endpoints=f"binance={endpoint}")
    return run_market_data(stream, opts, streaming=True)


def test_each_final_1m_candle_is_compared_with_the_venue_kline() -> None:
    klines = binance_1m_klines(first_trades())
    with LoopbackVenue(binance_klines("BTCUSDT", {"1m": klines})) as venue:
        rows = run_stream(venue.endpoint)
    status = {(r["timestamp_in"] // 1000 - START_MS) // MINUTE_MS: r for r in rows["reconciliation"]}
    last = max(status)
    assert sorted(status) == list(range(last + 1)) and len(rows["reconciliation"]) == last + 1
    # 04:01 and the gap candles after the last trade (until the idle timeout) have no kline: empty
    assert [status[m]["status"] for m in range(last + 1)] == \
        ["match", "empty", "match", "match", "match"] + ["empty"] * (last - 4)
    assert status[0]["fields_compared"] == "open,high,low,close,volume,trades"
    assert (status[3]["trades"], status[3]["venue_trades"]) == (3, 3)
    assert all(r["source"] == "stream" and r["volume_difference"] in (0.0, None) for r in rows["reconciliation"])
    assert rows["dead_letter"] == []
    # each request asks for the minutes that fell due together, each minute once
    asked = sorted(minute for path, q in venue.requests
                   for minute in range((int(q["startTime"]) - START_MS) // MINUTE_MS,
                                       (int(q["endTime"]) + 1 - START_MS) // MINUTE_MS))
    assert asked == list(range(last + 1))
    assert {(path, q["interval"], q["symbol"]) for path, q in venue.requests} == {("/api/v3/klines", "1m", "BTCUSDT")}


def test_a_kline_that_differs_is_a_mismatch_at_its_minute_and_field() -> None:
    klines = binance_1m_klines(first_trades())
    klines[2][5] = f"{Decimal(klines[2][5]) + Decimal('0.00000001'):.8f}"  # 04:03: one satoshi more
    with LoopbackVenue(binance_klines("BTCUSDT", {"1m": klines})) as venue:
        rows = run_stream(venue.endpoint)
    [differs] = [r for r in rows["reconciliation"] if r["status"] != "match" and r["status"] != "empty"]
    assert ((differs["timestamp_in"] // 1000 - START_MS) // MINUTE_MS, differs["status"],
            differs["first_difference"], differs["differing_fields"]) == (3, "mismatch", "volume", "volume")
    assert differs["volume_difference"] == pytest.approx(1e-8, rel=1e-9)


def _candle(exchange: str, symbol: str, minute: int) -> dict[str, Any]:
    start = (START_MS + minute * MINUTE_MS) * 1000
    return {"exchange": exchange, "symbol": symbol, "native_symbol": symbol.replace("-", ""),
            "timeframe": "1m", "timestamp_in": start, "window_end": start + MINUTE_MS * 1000,
            "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0, "trades": 1,
            "is_final": True, "is_partial": False, "revision": 0}


def _slow(path: str, query: dict[str, str]) -> Answer:
    time.sleep(1.0)  # far beyond the client's timeout below
    return 200, [], {}


@pytest.mark.parametrize("handler, requests_per_round, reason", [
    (lambda path, query: (503, {"code": -1003, "msg": "overloaded"}, {}), ATTEMPTS_PER_ROUND, "HTTP 503"),
    (_slow, ATTEMPTS_PER_ROUND, "ReadTimeout"),
    (lambda path, query: (200, "<html>maintenance</html>", {}), 1, "not in the documented format"),
], ids=["down", "slow", "garbage"])
def test_a_kline_api_down_slow_or_garbled_costs_bounded_retries_then_dead_letters(
        handler: Handler, requests_per_round: int, reason: str) -> None:
    """Each candle is tried MAX_ROUNDS rounds (ATTEMPTS_PER_ROUND requests each where retrying can
    help), then becomes a `reconcile` dead letter saying why; a market the venue does not list is
    a dead letter at once; a venue without a kline API (bitmex) is skipped. The job goes on."""
    with LoopbackVenue(handler) as venue:
        candles = [_candle("binance", "BTC-USDT", 0), _candle("binance", "NOPE", 0),
                   _candle("bitmex", "BTC-USD-PERP", 0), _candle("binance", "BTC-USDT", 15)]
        stream = (TestStream().advance_watermark_to(Timestamp(micros=START_MS * 1000))
                  .add_elements(candles).advance_watermark_to_infinity())
        opts = PipelineOptions()
        opts.view_as(StandardOptions).streaming = True
        with beam.Pipeline(runner="DirectRunner", options=opts) as pipeline:
            out = (pipeline | stream
                   | ReconcileCandles(ReconcileCandlesFn(120, {"binance": venue.endpoint}, timeout_s=0.3,
                                                         backoff_s=0.01)))
            out.rows | "Rows" >> beam.ParDo(CollectFn("unreachable:rows"))
            out[DEAD_LETTER_TAG] | "DeadLetters" >> beam.ParDo(CollectFn("unreachable:dead"))
    with _Collected.lock:
        rows, dead = _Collected.rows.pop("unreachable:rows", []), _Collected.rows.pop("unreachable:dead", [])
    assert rows == []
    reasons = sorted(d["reason"] for d in dead)
    assert len(dead) == 3 and all(d["stage"] == "reconcile" for d in dead)
    assert sum(r.startswith(f"gave up after {MAX_ROUNDS} rounds") and reason in r for r in reasons) == 2, reasons
    assert sum("NOPE" in r for r in reasons) == 1
    # the two BTC-USDT candles fall due apart: each its own rounds of requests
    assert len(venue.requests) == 2 * MAX_ROUNDS * requests_per_round


@pytest.mark.parametrize("overrides, bounded, message", [
    ({}, True, "is for streaming jobs"),
    ({"mode": "ticks"}, False, "needs candles"),
    ({"timeframes": "5m,4h"}, False, "with 1m in --timeframes"),
])
def test_a_job_the_streaming_reconciliation_cannot_serve_is_refused_before_it_starts(
        overrides: dict[str, Any], bounded: bool, message: str) -> None:
    opts = options(reconcile_delay_seconds=180, **overrides)
    with pytest.raises(ValueError, match=message):
        _ = beam.Pipeline(runner="DirectRunner") | beam.Create([]) | MarketData(
            opts.view_as(MarketDataOptions), bounded=bounded)
