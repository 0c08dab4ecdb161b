"""HFT features as the pipeline produces them (SPEC §5).

- On the real day: the 1m rows of `mds replay` carry exactly TA-Lib's values (reference CSV built
  with TA-Lib 0.8.2 from the same trades), gap minutes included.
- In a stream: the stateful DoFn's features (incremental `step`, candles arriving out of order,
  late ticks revising earlier candles) equal the vectorised batch path over the final candles.
"""
from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import numpy as np
import pytest
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Timestamp

from transforms.features import CANDLE_FIELDS, FEATURE_NAMES, compute_features
from tests.pipeline_helpers import SECOND_US, T0_US, by_timeframe, message, options, run_market_data, stamped, tick

REFERENCE = Path(__file__).parent / "data" / "talib_BTCUSDT_2017-08-17_1m.csv"
TALIB_COLUMNS = ("sma_5", "sma_10", "sma_20", "ema_5", "ema_10", "ema_20", "wma_5", "rsi_5",
                 "macd", "macd_signal", "macd_hist")


def _close_enough(got, want, rel: float) -> bool:
    if want is None or (isinstance(want, float) and math.isnan(want)):
        return got is None
    return got is not None and math.isclose(got, want, rel_tol=rel, abs_tol=1e-12)


def test_replay_1m_features_equal_talib_reference(sample_replay):
    minutes = {c["timestamp_in"]: c for c in sample_replay["candles"] if c["timeframe"] == "1m"}
    with REFERENCE.open() as handle:
        reference = list(csv.DictReader(handle))
    assert len(reference) == 1200
    for row in reference:
        candle = minutes[row["open_time_utc"].replace("Z", ".000000Z")]
        assert candle["close"] == float(row["close"])
        assert candle["is_gap"] == (row["is_empty_minute"] == "True")
        for column in TALIB_COLUMNS:
            want = float(row[column]) if row[column] else None
            assert _close_enough(candle[column], want, 1e-9), (row["open_time_utc"], column)


def _feature_rows_equal_batch(rows: list[dict], timeframe_seconds: float) -> None:
    series = {f: np.array([np.nan if r[f] is None else r[f] for r in rows], dtype=np.float64)
              for f in CANDLE_FIELDS}
    expected = compute_features(series, timeframe_seconds)
    for i, row in enumerate(rows):
        for name in FEATURE_NAMES:
            assert _close_enough(row[name], float(expected[name][i]), 1e-12), (i, name)


@pytest.mark.timeout(300)
def test_streaming_features_equal_batch_path_with_out_of_order_and_late_candles():
    rng = random.Random(7)
    ticks, ts_us = [], {}
    for i in range(900):  # ~18 minutes of trades, with a quiet spell (gap candles)
        ts_us[str(i)] = T0_US + int((i + (200 if i > 400 else 0)) * SECOND_US)
        ticks.append(tick(i, round(100 + 5 * math.sin(i / 40) + rng.uniform(-1, 1), 2),
                          round(rng.uniform(0.01, 2), 3), ts_us[str(i)], rng.choice(["buy", "sell"])))
    late = [t for t in ticks if int(t["id"]) % 23 == 0]  # held back, delivered late
    on_time = [t for t in ticks if int(t["id"]) % 23]
    stream = TestStream().advance_watermark_to(Timestamp(micros=T0_US))

    def send(part: list[dict]) -> None:
        msg = message(part)
        stream.add_elements([stamped(msg)])

    chunks = [on_time[i:i + 40] for i in range(0, len(on_time), 40)]
    for index, chunk in enumerate(chunks):
        for part in ([chunk[20:], chunk[:20]] if index % 2 else [chunk]):  # later batch first
            if part:
                send(part)
        newest_us = max(ts_us[t["id"]] for t in chunk)
        stream.advance_watermark_to(Timestamp(micros=newest_us - 20 * SECOND_US))
        if index % 2:  # late ticks, 30-70 s behind the newest: within the allowed lateness
            due = [t for t in late if ts_us[t["id"]] < newest_us - 30 * SECOND_US]
            for t in due:
                late.remove(t)
                send([t])
    for t in late:
        send([t])
    stream.advance_watermark_to_infinity()
    rows = run_market_data(stream, options(mode="candles", timeframes="15s,1m", feature_timeframes="15s,1m",
                                           allowed_lateness_seconds=400, idle_timeout_seconds=60),
                           streaming=True)
    assert rows["dead_letter"] == []
    assert any(c["revision"] > 0 for c in rows["candles"]), "the late ticks revised candles"
    for timeframe, seconds in (("15s", 15), ("1m", 60)):
        final = by_timeframe(rows["candles"], timeframe)
        assert sum(c["trades"] for c in final) == len(ticks)
        _feature_rows_equal_batch(final, seconds)
