"""`mds reconcile` on the bundled real day: our replayed candles against Binance's official klines
served by a loopback API in Binance's own format: every candle matches; one altered trade is
found at its candle and field."""
from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipelines.reconcile import main
from pipelines.replay import parse_args, replay
from reconcile.loopback import LoopbackVenue, binance_klines, load_klines

OFFICIAL_4H = Path(__file__).parent / "data" / "BTCUSDT-4h-official-2017-08-17.csv"
OFFICIAL_TRADES = Path(__file__).parent / "data" / "BTCUSDT-trades-2017-08-17.csv"  # Binance's raw file
DAY = ["--from", "2017-08-17", "--to", "2017-08-18"]


def reconcile(venue: LoopbackVenue, input_dir: Path, output_dir: Path, *extra: str) -> int:
    return main(["--exchange", "binance", "--symbol", "BTC-USDT", *DAY, "--input-dir", str(input_dir),
                 "--output-dir", str(output_dir), "--endpoint", venue.endpoint, *extra])


def rows_of(output_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output_dir / "candle_reconciliation.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def official() -> dict[str, Any]:
    return load_klines()


def test_the_bundled_klines_are_binances_official_ones(official: dict[str, Any]) -> None:
    """OHLCV of the bundled 4h klines = Binance's official 4h record of the day, to the digit."""
    with OFFICIAL_4H.open(newline="") as handle:
        record = [[Decimal(r[name]) for name in ("open", "high", "low", "close", "volume")]
                  for r in csv.DictReader(handle)]
    assert [[Decimal(v) for v in k[1:6]] for k in official["klines"]["4h"]] == record
    assert [k[0] for k in official["klines"]["4h"]] == [1_502_942_400_000 + i * 14_400_000 for i in range(5)]
    assert [k[6] - k[0] + 1 for k in official["klines"]["4h"]] == [14_400_000] * 5  # close time


def test_the_replayed_day_matches_binances_klines_100_percent(sample_replay: dict[str, Any], tmp_path: Path,
                                                              official: dict[str, Any], capsys: Any) -> None:
    with LoopbackVenue(binance_klines(official["symbol"], official["klines"])) as venue:
        code = reconcile(venue, sample_replay["dir"], tmp_path, "--timeframe", "4h,24h")
    rows = rows_of(tmp_path)
    assert code == 0
    assert [(r["timeframe"], r["timestamp_in"][11:16], r["status"]) for r in rows] == \
        [("4h", f"{h:02d}:00", "match") for h in (4, 8, 12, 16, 20)] + [("24h", "00:00", "match")]
    assert all(r["fields_compared"] == "open,high,low,close,volume,trades" for r in rows)
    assert rows[-1]["volume"] == rows[-1]["venue_volume"] == 795.150377 and rows[-1]["trades"] == 3427
    out = capsys.readouterr().out
    assert "✅ reconciled 5/5 4h candles with binance 4h klines (BTCUSDT)" in out
    assert "✅ reconciled 1/1 24h candles with binance 1d klines (BTCUSDT)" in out


def test_one_altered_trade_is_found_at_its_candle_and_field(tmp_path: Path, official: dict[str, Any]) -> None:
    """Trade 1000 (12:xx UTC) of Binance's own trades file priced above the day's high: the 12:00 4h
    candle and the day differ in `high` and nothing else; every other candle still matches. Read
    from a Parquet replay output."""
    with OFFICIAL_TRADES.open(newline="") as handle:
        trades = list(csv.reader(handle))
    assert trades[1000][0] == "1000" and 1_502_971_200_000 <= int(trades[1000][4]) < 1_502_985_600_000
    trades[1000][1] = "4500.00000000"
    altered = tmp_path / OFFICIAL_TRADES.name  # the file name names the market
    with altered.open("w", newline="") as handle:
        csv.writer(handle).writerows(trades)
    replayed = tmp_path / "replay"
    replay(parse_args(["--input", str(altered), "--output-dir", str(replayed), "--format", "parquet",
                       "--timeframes", "4h,24h", "--feature-timeframes", "", "--quiet", "--start-time",
                       "2017-08-17", "--end-time", "2017-08-18"]))
    with LoopbackVenue(binance_klines(official["symbol"], official["klines"])) as venue:
        code = reconcile(venue, replayed, tmp_path / "out", "--timeframe", "4h,24h")
    rows = rows_of(tmp_path / "out")
    assert code == 1
    assert [(r["timeframe"], r["timestamp_in"][11:16], r["status"], r["differing_fields"]) for r in rows] == [
        ("4h", "04:00", "match", None), ("4h", "08:00", "match", None), ("4h", "12:00", "mismatch", "high"),
        ("4h", "16:00", "match", None), ("4h", "20:00", "match", None), ("24h", "00:00", "mismatch", "high")]
    assert (rows[2]["high"], rows[2]["venue_high"]) == (4500.0, 4485.39)


@pytest.mark.parametrize("argv, message", [
    (["--timeframe", "15s"], "binance has no 15s klines"),
    (["--timeframe", "7m"], "timeframe '7m' must be a multiple of 15s that divides 24h"),
    (["--exchange", "bitmex", "--symbol", "XBTUSD"], "no kline API known for 'bitmex'"),
    (["--to", "2017-08-16"], "is not after"),
])
def test_what_cannot_be_compared_is_a_clear_error(sample_replay: dict[str, Any], tmp_path: Path, argv: list[str],
                                                  message: str, capsys: Any) -> None:
    base = {"--exchange": "binance", "--symbol": "BTC-USDT", "--timeframe": "4h", "--from": "2017-08-17",
            "--to": "2017-08-18", "--input-dir": str(sample_replay["dir"]), "--output-dir": str(tmp_path),
            "--endpoint": "http://127.0.0.1:9"}
    base.update(dict(zip(argv[::2], argv[1::2])))
    assert main([item for pair in base.items() for item in pair]) == 2
    assert message in capsys.readouterr().err


def test_an_input_dir_without_candles_says_so(tmp_path: Path, capsys: Any) -> None:
    assert main(["--exchange", "binance", "--symbol", "BTC-USDT", *DAY, "--input-dir", str(tmp_path)]) == 2
    assert "no candles.jsonl/.parquet in" in capsys.readouterr().err
