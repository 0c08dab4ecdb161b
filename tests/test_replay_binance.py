"""`mds replay` on the bundled real day: candles equal Binance's own, files are complete.

Binance published 4h and 1d klines for BTCUSDT on 2017-08-17 (its first trading day); candles
built from its official trades file must reproduce them exactly. Volumes are compared at the
exchange's 8-decimal precision (a float sum of 8-decimal quantities is exact to far below that).
"""
from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pipelines.replay import SAMPLE

DATA = Path(__file__).parent / "data"
OFFICIAL_4H = DATA / "BTCUSDT-4h-official-2017-08-17.csv"
# Binance's 1d kline for the day, from its kline API (GET /api/v3/klines?symbol=BTCUSDT&interval=1d).
OFFICIAL_1D = {"open": 4261.48, "high": 4485.39, "low": 4200.74, "close": 4285.08, "volume": 795.150377}

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def replayed(sample_replay):
    return sample_replay["summary"], sample_replay["candles"], sample_replay["dir"]


def _iso(text: str) -> str:
    stamp = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def test_four_hour_candles_equal_binance_official(replayed):
    _, candles, _ = replayed
    ours = {c["timestamp_in"]: c for c in candles if c["timeframe"] == "4h" and not c["is_gap"]}
    with OFFICIAL_4H.open() as handle:
        official = list(csv.DictReader(handle))
    assert len(official) == 5
    assert sorted(ours) == sorted(_iso(row["timestamp"]) for row in official)
    for row in official:
        candle = ours[_iso(row["timestamp"])]
        assert (candle["open"], candle["high"], candle["low"], candle["close"]) == \
            tuple(float(row[k]) for k in ("open", "high", "low", "close"))
        assert round(candle["volume"], 8) == float(row["volume"])
        assert candle["revision"] == 0 and candle["is_final"]


def test_daily_candle_equals_binance_official(replayed):
    _, candles, _ = replayed
    [day] = [c for c in candles if c["timeframe"] == "24h"]
    assert day["timestamp_in"] == "2017-08-17T00:00:00.000000Z"
    assert day["window_end"] == "2017-08-18T00:00:00.000000Z"
    assert (day["open"], day["high"], day["low"], day["close"]) == \
        tuple(OFFICIAL_1D[k] for k in ("open", "high", "low", "close"))
    assert round(day["volume"], 8) == OFFICIAL_1D["volume"]
    assert day["trades"] == 3427 and (day["first_trade_id"], day["last_trade_id"]) == ("0", "3426")


def test_every_tick_is_written_once_and_nothing_is_dead_lettered(replayed):
    summary, _, out = replayed
    ticks = [json.loads(line) for line in (out / "ticks.jsonl").read_text().splitlines()]
    assert len(ticks) == 3427 == summary["unique_ticks"]
    assert len({t["id"] for t in ticks}) == 3427
    assert (out / "dead_letter.jsonl").read_text() == ""
    assert ticks[0]["timestamp"] == "2017-08-17T04:00:28.322000Z" and ticks[0]["side"] == "sell"


def test_series_are_contiguous_with_features_and_latency(replayed):
    _, candles, _ = replayed
    minutes = [c for c in candles if c["timeframe"] == "1m"]
    starts = [datetime.fromisoformat(c["timestamp_in"].replace("Z", "+00:00")) for c in minutes]
    assert all((b - a).total_seconds() == 60 for a, b in zip(starts, starts[1:]))
    assert minutes[0]["timestamp_in"] == "2017-08-17T04:00:00.000000Z" and minutes[0]["is_partial"]
    assert minutes[0]["sma_5"] is None and minutes[4]["sma_5"] is not None
    assert minutes[40]["macd_signal"] is not None
    assert all(c["latency_ms"] > 0 and c["timestamp_out"] for c in candles)
    # Features are computed on the configured timeframes only.
    assert all(c["sma_5"] is None for c in candles if c["timeframe"] in ("5m", "4h", "24h"))


def test_bundled_sample_stays_small():
    assert Path(SAMPLE).exists() and Path(SAMPLE).stat().st_size < 5_000_000


def test_output_files_are_sorted_with_their_lines_unchanged(replayed):
    """replay sorts each file by its key, writing back the lines the sinks wrote (no re-encoding)."""
    from pipelines.replay import _sort_output

    _, candles, out = replayed
    keys = [(c["symbol"], c["timeframe"], c["timestamp_in"], c["revision"]) for c in candles]
    assert keys == sorted(keys)
    shuffled = out / "shuffled.jsonl"
    lines = (out / "candles.jsonl").read_text().splitlines(keepends=True)
    shuffled.write_text("".join(lines[1::2] + lines[::2]).rstrip("\n"))  # no final newline
    rows = _sort_output(str(shuffled), lambda r: (r["symbol"], r["timeframe"], r["timestamp_in"],
                                                    r["revision"]))
    assert shuffled.read_text() == "".join(lines) and len(rows) == len(lines)


@pytest.mark.timeout(60)
def test_progress_total_counts_lines_of_plain_and_gzipped_files(tmp_path):
    import gzip

    from pipelines.replay import _count_lines

    (tmp_path / "a.csv").write_text("header\n1\n2")  # a last line without newline counts
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.write("{}\n" * 5)
    (tmp_path / "empty.csv").write_text("")
    assert [_count_lines(str(tmp_path / n)) for n in ("a.csv", "b.jsonl.gz", "empty.csv")] == [3, 5, 0]
    assert _count_lines(SAMPLE) == 1 + 3427  # header + ticks
