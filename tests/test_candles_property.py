"""Property: for any set of ticks, every timeframe's candles equal a plain pandas groupby.

The pandas side is the specification written the obvious way (sort by (timestamp, id), floor the
timestamp to the timeframe, aggregate); the pipeline side is the real transform, on both paths:
bounded (replay) and streaming (TestStream, arrival order shuffled).
"""
from __future__ import annotations

import random

import pandas as pd
import pytest
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.candles import parse_timeframes
from tests.pipeline_helpers import T0_US, message, options, run_market_data, stamped, tick

TIMEFRAMES = "15s,1m,5m,15m,4h,24h"
SPAN_US = 6 * 3600 * 1_000_000  # ticks spread over 6 hours, across 4h boundaries

tick_sets = st.lists(
    st.tuples(st.integers(0, SPAN_US - 1),
              st.integers(1, 500_000).map(lambda cents: cents / 100),
              st.integers(0, 10_000).map(lambda units: units / 1000),
              st.sampled_from(["buy", "sell", "unknown"]),
              st.sampled_from(["BTC-USDT", "ETH-USDT"])),
    min_size=1, max_size=60)


def reference(ticks: list[dict]) -> dict[tuple, dict]:
    frame = pd.DataFrame({
        "symbol": [t["symbol"] for t in ticks], "id": [int(t["id"]) for t in ticks],
        "ts": [t["_ts"] for t in ticks], "price": [t["price"] for t in ticks],
        "amount": [t["amount"] for t in ticks], "side": [t["side"] for t in ticks]})
    frame = frame.sort_values(["ts", "id"])
    frame["quote"] = frame.price * frame.amount
    frame["buy_amount"] = frame.amount.where(frame.side == "buy", 0.0)
    frame["sell_amount"] = frame.amount.where(frame.side == "sell", 0.0)
    expected = {}
    for label, seconds in parse_timeframes(TIMEFRAMES):
        length = seconds * 1_000_000
        frame["start"] = frame.ts // length * length
        grouped = frame.groupby(["symbol", "start"]).agg(
            open=("price", "first"), high=("price", "max"), low=("price", "min"),
            close=("price", "last"), volume=("amount", "sum"), quote_volume=("quote", "sum"),
            trades=("price", "size"), buy_volume=("buy_amount", "sum"),
            sell_volume=("sell_amount", "sum"), first_trade_id=("id", "first"),
            last_trade_id=("id", "last"), buy_trades=("side", lambda s: int((s == "buy").sum())),
            sell_trades=("side", lambda s: int((s == "sell").sum())))
        for (symbol, start), row in grouped.iterrows():
            expected[(symbol, label, int(start))] = row.to_dict()
    return expected


def make_ticks(raw: list[tuple]) -> list[dict]:
    ticks = []
    for trade_id, (offset, price, amount, side, symbol) in enumerate(raw):
        t = tick(trade_id, price, amount, T0_US + offset, side, symbol=symbol)
        t["_ts"] = T0_US + offset
        ticks.append(t)
    return ticks


def check(candles: list[dict], expected: dict[tuple, dict]) -> None:
    latest: dict[tuple, dict] = {}
    for c in candles:
        key = (c["symbol"], c["timeframe"], c["timestamp_in"])
        if c["is_final"] and (key not in latest or c["revision"] > latest[key]["revision"]):
            latest[key] = c
    assert set(latest) == set(expected)
    for key, want in expected.items():
        got = latest[key]
        for column in ("open", "high", "low", "close", "trades", "buy_trades", "sell_trades"):
            assert got[column] == want[column], (key, column)
        assert (got["first_trade_id"], got["last_trade_id"]) == \
            (str(int(want["first_trade_id"])), str(int(want["last_trade_id"])))
        for column in ("volume", "quote_volume", "buy_volume", "sell_volume"):
            assert got[column] == pytest.approx(want[column], rel=1e-12, abs=1e-12), (key, column)
        vwap = want["quote_volume"] / want["volume"] if want["volume"] > 0 else None
        assert got["vwap"] == (pytest.approx(vwap, rel=1e-12) if vwap is not None else None)


def messages_of(ticks: list[dict], seed: int) -> list:
    """Ticks in messages of 1-5 ticks of one symbol, in shuffled order."""
    shuffled = [{k: v for k, v in t.items() if k != "_ts"} for t in ticks]
    random.Random(seed).shuffle(shuffled)
    result = []
    for symbol in ("BTC-USDT", "ETH-USDT"):
        mine = [t for t in shuffled if t["symbol"] == symbol]
        for i in range(0, len(mine), 3):
            result.append(message(mine[i:i + 3]))
    return result


@pytest.mark.timeout(600)
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(raw=tick_sets, seed=st.integers(0, 1000))
def test_bounded_candles_equal_pandas_groupby(raw, seed):
    ticks = make_ticks(raw)
    rows = run_market_data(messages_of(ticks, seed), options(timeframes=TIMEFRAMES, gap_candles=False),
                           streaming=False)
    check(rows["candles"], reference(ticks))


@pytest.mark.timeout(600)
@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(raw=tick_sets, seed=st.integers(0, 1000))
def test_streaming_candles_equal_pandas_groupby(raw, seed):
    ticks = make_ticks(raw)
    stream = TestStream().advance_watermark_to(Timestamp(micros=T0_US))
    for msg in messages_of(ticks, seed):
        stream.add_elements([stamped(msg)])
    stream.advance_watermark_to_infinity()
    rows = run_market_data(stream, options(timeframes=TIMEFRAMES, gap_candles=False,
                                           allowed_lateness_seconds=7 * 3600), streaming=True)
    check(rows["candles"], reference(ticks))
