"""Backfill up to T, then stream from T: one series, as if one job had seen everything.

The bundled real day is cut at T = 20:00 UTC. The bounded run over [00:00, T) writes series
checkpoints; a streaming run (TestStream, the Pub/Sub code path: windows, triggers, timers) over
the ticks from T, given those checkpoints, must produce after T the very candles one bounded run
over the whole day produces: no restart (is_partial), gaps across T, and features (EMA, RSI,
MACD, ... which depend on the whole past) equal.
"""
from __future__ import annotations

import pytest
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Timestamp

from ingest.files import iter_ticks
from ingest.message import parse_time_us
from pipelines.replay import SAMPLE
from tests.pipeline_helpers import by_timeframe, message, options, run_market_data, stamped
from transforms.features import FEATURE_NAMES

T_US = parse_time_us("2017-08-17T20:00:00Z")
DAY_END_US = parse_time_us("2017-08-18T00:00:00Z")
COMPARED = ("open", "high", "low", "close", "volume", "quote_volume", "trades", "vwap", "is_gap",
            "is_partial", "buy_volume", "sell_volume", "first_trade_id", "last_trade_id") + FEATURE_NAMES

pytestmark = pytest.mark.timeout(600)


def _messages(ticks: list[dict]) -> list:
    return [message(ticks[i:i + 200]) for i in range(0, len(ticks), 200)]


def test_stream_from_a_backfill_checkpoint_continues_the_series(tmp_path):
    ticks = list(iter_ticks(SAMPLE))
    before = [t for t in ticks if parse_time_us(t["timestamp"]) < T_US]
    after = [t for t in ticks if parse_time_us(t["timestamp"]) >= T_US]
    settings = dict(mode="candles", timeframes="1m,4h", feature_timeframes="1m",
                    idle_timeout_seconds=3600, allowed_lateness_seconds=0)

    whole = run_market_data(_messages(ticks), options(**settings, end_time="2017-08-18"),
                            streaming=False)["candles"]
    backfill = run_market_data(_messages(before), options(
        **settings, end_time="2017-08-17T20:00:00Z", checkpoint_dir=str(tmp_path)), streaming=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "binance_BTC-USDT_1m.series.json", "binance_BTC-USDT_4h.series.json"]
    assert max(c["window_end"] for c in backfill["candles"]) == T_US

    stream = TestStream().advance_watermark_to(Timestamp(micros=T_US))
    for msg in _messages(after):
        stream.add_elements([stamped(msg)])
    stream.advance_watermark_to(Timestamp(micros=DAY_END_US)).advance_watermark_to_infinity()
    live = run_market_data(stream, options(**settings, checkpoint_dir=str(tmp_path)),
                           streaming=True)["candles"]

    for timeframe in ("1m", "4h"):
        expected = [c for c in by_timeframe(whole, timeframe) if T_US <= c["timestamp_in"] < DAY_END_US]
        got = [c for c in by_timeframe(live, timeframe) if T_US <= c["timestamp_in"] < DAY_END_US]
        assert [c["timestamp_in"] for c in got] == [c["timestamp_in"] for c in expected]
        assert not got[0]["is_partial"]  # the series goes on: no restart at T
        for ours, theirs in zip(got, expected):
            for column in COMPARED:
                want = theirs[column]
                if isinstance(want, float):
                    want = pytest.approx(want, rel=1e-12, abs=1e-12)
                assert ours[column] == want, (timeframe, ours["timestamp_in"], column)
    assert sum(c[f] is not None for c in by_timeframe(live, "1m") for f in ("ema_20", "macd_signal")) > 400
