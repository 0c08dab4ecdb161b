"""`mds replay` on the bundled real day: candles equal Binance's own, files are complete.

Binance published 4h and 1d klines for BTCUSDT on 2017-08-17 (its first trading day); candles
built from its official trades file must reproduce them exactly, volumes included: the sums are
exact decimals, so the JSON prints Binance's own digits (795.150377, not 795.1503769999966).
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
        assert candle["volume"] == float(row["volume"]) and repr(candle["volume"]) == row["volume"].rstrip("0")
        assert candle["revision"] == 0 and candle["is_final"]


def test_daily_candle_equals_binance_official(replayed):
    _, candles, out = replayed
    [day] = [c for c in candles if c["timeframe"] == "24h"]
    assert day["timestamp_in"] == "2017-08-17T00:00:00.000000Z"
    assert day["window_end"] == "2017-08-18T00:00:00.000000Z"
    assert (day["open"], day["high"], day["low"], day["close"]) == \
        tuple(OFFICIAL_1D[k] for k in ("open", "high", "low", "close"))
    assert day["volume"] == OFFICIAL_1D["volume"]
    assert '"volume":795.150377,' in (out / "candles.jsonl").read_text()
    assert day["trades"] == 3427 and (day["first_trade_id"], day["last_trade_id"]) == ("0", "3426")


def test_every_tick_is_written_once_and_nothing_is_dead_lettered(replayed):
    summary, _, out = replayed
    ticks = [json.loads(line) for line in (out / "ticks.jsonl").read_text().splitlines()]
    assert len(ticks) == 3427 == summary["unique_ticks"]
    assert len({t["id"] for t in ticks}) == 3427
    assert (out / "dead_letter.jsonl").read_text() == ""
    assert ticks[0]["timestamp"] == "2017-08-17T04:00:28.322000Z" and ticks[0]["side"] == "sell"


def test_series_are_contiguous_with_features_and_no_latency(replayed):
    _, candles, _ = replayed
    minutes = [c for c in candles if c["timeframe"] == "1m"]
    starts = [datetime.fromisoformat(c["timestamp_in"].replace("Z", "+00:00")) for c in minutes]
    assert all((b - a).total_seconds() == 60 for a, b in zip(starts, starts[1:]))
    assert minutes[0]["timestamp_in"] == "2017-08-17T04:00:00.000000Z" and minutes[0]["is_partial"]
    assert minutes[0]["sma_5"] is None and minutes[4]["sma_5"] is not None
    assert minutes[40]["macd_signal"] is not None
    # History is not latency: NULL, so the latency views (which skip NULLs) never see it.
    assert all(c["latency_ms"] is None and c["timestamp_out"] for c in candles)
    # Features are computed on the configured timeframes only.
    assert all(c["sma_5"] is None for c in candles if c["timeframe"] in ("5m", "4h", "24h"))


def test_bundled_sample_stays_small():
    assert Path(SAMPLE).exists() and Path(SAMPLE).stat().st_size < 5_000_000


def test_no_candle_after_the_end_of_the_day(replayed):
    """Replayed over its day, the series are gap-filled to midnight and stop there (the old
    bounded flush went on for an hour past the input, up to 2017-08-18T00:57)."""
    _, candles, _ = replayed
    last = {}
    for c in candles:
        last[c["timeframe"]] = max(last.get(c["timeframe"], ""), c["window_end"])
    assert set(last.values()) == {"2017-08-18T00:00:00.000000Z"}


def test_without_a_range_no_candle_after_the_last_trade():
    """No --end_time: each series ends with the candle of its last trade, no trailing gaps."""
    from tests.pipeline_helpers import T0_US, message, options, run_market_data, tick

    ticks = [tick(1, 100.0, 1.0, T0_US + 5_000_000), tick(2, 101.0, 1.0, T0_US + 150_000_000)]
    rows = run_market_data([message(ticks)], options(mode="candles", timeframes="15s,1m,4h"),
                           streaming=False)
    ends = {}
    for c in rows["candles"]:
        ends[c["timeframe"]] = max(ends.get(c["timeframe"], 0), c["window_end"])
    assert ends == {"15s": T0_US + 165_000_000, "1m": T0_US + 180_000_000, "4h": T0_US + 4 * 3600_000_000}


def test_output_files_are_sorted_with_their_lines_unchanged(replayed, tmp_path):
    """Shards are merged into one file sorted by its key, the lines as the sinks wrote them."""
    from pipelines.bounded_run import merge_outputs

    _, candles, out = replayed
    keys = [(c["symbol"], c["timeframe"], c["timestamp_in"], c["revision"]) for c in candles]
    assert keys == sorted(keys)
    lines = (out / "candles.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "candles-00000-of-00002.jsonl").write_text("".join(lines[1::2]))
    (tmp_path / "candles-00001-of-00002.jsonl").write_text("".join(lines[::2]).rstrip("\n"))
    assert merge_outputs(str(tmp_path), "candles", "jsonl") == len(lines)
    assert (tmp_path / "candles.jsonl").read_text() == "".join(lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candles.jsonl"]


@pytest.mark.timeout(60)
def test_progress_counts_each_file_once_over_worker_snapshots(tmp_path):
    from pipelines.progress import ProgressWriter, read_progress

    first, second = ProgressWriter(str(tmp_path)), ProgressWriter(str(tmp_path))
    first.update("a.csv", 1000)
    first.update("a.csv", 500)
    first.done("a.csv")
    second.update("b.csv", 7)
    second.done("b.csv")
    retried = ProgressWriter(str(tmp_path))  # a retried bundle reads a.csv again
    retried.update("a.csv", 1500)
    retried.done("a.csv")
    (tmp_path / "garbage.json").write_text("{half")
    assert read_progress(str(tmp_path)) == (2, 1507)
