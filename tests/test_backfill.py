"""`mds backfill`: days × symbols through the bounded pipeline, exact across files, in parallel.

1. The bundled real Binance day split into two overlapping files at an arbitrary moment gives
   the very candles one file gives (features included), 4h/24h equal to Binance's own klines
   with volumes printed as Binance prints them, and the overlap deduplicated across files.
2. A loopback server speaking the Tardis.dev datasets layout
   (https://docs.tardis.dev/downloadable-csv-files: GET {endpoint}/{exchange}/{data_type}/
   YYYY/MM/DD/{SYMBOL}.csv.gz, gzipped CSV with header
   exchange,symbol,timestamp,local_timestamp,id,side,price,amount, µs times) is downloaded from by
   the real tardis-dev client: 3 days × 2 symbols fetched once, cached, and backfilled.
"""
from __future__ import annotations

import csv
import gzip
import http.server
import json
import threading
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import pytest

from pipelines.backfill import backfill, parse_args
from pipelines.cli import main
from pipelines.replay import SAMPLE

DATA = Path(__file__).parent / "data"
OFFICIAL_4H = DATA / "BTCUSDT-4h-official-2017-08-17.csv"
DAY = "2017-08-17"

pytestmark = pytest.mark.timeout(600)


def _candles(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:  # run stamps: when the row was written, by which job
        assert row.pop("timestamp_out") and row.pop("job_start") and row["latency_ms"] is None
    return rows


def _parquet_candles(path: Path) -> list[dict[str, Any]]:
    """Parquet rows back in the JSONL form (ISO times) to compare with the JSONL output."""
    import pandas as pd

    frame = pd.read_parquet(path)
    rows = []
    for record in frame.to_dict("records"):
        row = {}
        for name, value in record.items():
            if value is None or pd.isna(value):
                value = None
            elif isinstance(value, pd.Timestamp):
                value = value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            elif hasattr(value, "item"):
                value = value.item()
            row[name] = value
        assert row.pop("timestamp_out") and row.pop("job_start") and row["latency_ms"] is None
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def one_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one-file")
    backfill(*parse_args(["--input", SAMPLE, "--from", DAY, "--to", "2017-08-18",
                          "--output-dir", str(out), "--workers", "1", "--quiet"]))
    return out


def test_day_split_into_two_overlapping_files_equals_one_file(one_file, tmp_path):
    lines = gzip.open(SAMPLE, "rt").read().splitlines()
    header, rows = lines[0], lines[1:]
    cut = 1711  # 12:26:45.092, inside a 15 s bucket, a 1m, a 4h and the 24h window
    overlap = 20  # these ticks are in both files: deduplicated across them
    for name, part in (("a.csv.gz", rows[:cut + overlap]), ("b.csv.gz", rows[cut:])):
        with gzip.open(tmp_path / name, "wt") as handle:
            handle.write("\n".join([header] + part) + "\n")
    out = tmp_path / "out"
    summary = backfill(*parse_args([
        "--input", f"{tmp_path / 'b.csv.gz'},{tmp_path / 'a*.csv.gz'}", "--from", DAY,
        "--to", "2017-08-18", "--output-dir", str(out), "--format", "parquet", "--workers", "2",
        "--quiet"]))
    assert summary["files"] == 2 and summary["unique_ticks"] == 3427
    assert summary["duplicate_ticks"] == overlap
    split = _parquet_candles(out / "candles.parquet")
    whole = _candles(one_file / "candles.jsonl")
    assert len(split) == len(whole) and split == whole

    ours = {c["timestamp_in"]: c for c in whole if c["timeframe"] == "4h" and not c["is_gap"]}
    with OFFICIAL_4H.open() as handle:
        official = list(csv.DictReader(handle))
    for row in official:
        stamp = datetime.strptime(row["timestamp"], "%Y-%m-%d %H:%M:%S").strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        candle = ours[stamp]
        assert [candle[k] for k in ("open", "high", "low", "close", "volume")] == \
            [float(row[k]) for k in ("open", "high", "low", "close", "volume")]
    text = (one_file / "candles.jsonl").read_text()
    [day] = [c for c in whole if c["timeframe"] == "24h"]
    assert (day["open"], day["high"], day["low"], day["close"], day["volume"], day["trades"]) == \
        (4261.48, 4485.39, 4200.74, 4285.08, 795.150377, 3427)
    assert '"timeframe":"24h"' in text and '"volume":795.150377,' in text


def test_no_candle_after_the_requested_range(one_file):
    """Gap candles run to --to (midnight), never past it: the last trade is 23:58:40."""
    candles = _candles(one_file / "candles.jsonl")
    assert max(c["window_end"] for c in candles) == "2017-08-18T00:00:00.000000Z"
    minutes = [c for c in candles if c["timeframe"] == "1m"]
    assert minutes[-1]["timestamp_in"] == "2017-08-17T23:59:00.000000Z" and minutes[-1]["is_gap"]
    assert minutes[-2]["timestamp_in"] == "2017-08-17T23:58:00.000000Z" and minutes[-2]["trades"] == 2


def test_parquet_is_read_by_duckdb_and_pyarrow(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    backfill(*parse_args(["--input", SAMPLE, "--from", DAY, "--to", "2017-08-18", "--mode", "both",
                          "--timeframes", "4h,24h", "--feature-timeframes", "", "--output-dir",
                          str(out), "--format", "parquet", "--workers", "1", "--quiet"]))
    volume, trades = duckdb.sql(
        f"SELECT volume, trades FROM read_parquet('{out}/candles.parquet') WHERE timeframe = '24h'").fetchall()[0]
    assert (volume, trades) == (795.150377, 3427)
    ticks = duckdb.sql(f"SELECT count(*), count(DISTINCT id), min(timestamp) FROM "
                       f"read_parquet('{out}/ticks-*.parquet')").fetchall()[0]
    assert ticks[:2] == (3427, 3427)
    assert ticks[2] == datetime(2017, 8, 17, 4, 0, 28, 322000, tzinfo=timezone.utc)
    schema = pq.read_schema(out / "candles.parquet")
    assert str(schema.field("timestamp_in").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("volume").type) == "double"


# ------------------------------------------------------------------ Tardis datasets, loopback

SYMBOLS = {"BTC-USDT": ("BTCUSDT", 42000.0), "ETH-USDT": ("ETHUSDT", 2300.0)}
DAYS = [date(2024, 1, 1) + timedelta(days=n) for n in range(3)]
TRADES_PER_DAY = 400


def _day_rows(native: str, base: float, day: date) -> list[list[str]]:
    """Deterministic trades: two-decimal prices, six-decimal amounts, one every 3.6 minutes."""
    start_us = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1e6)
    rows = []
    for n in range(TRADES_PER_DAY):
        ts = start_us + n * 216_000_000 + 1_000
        price = Decimal(str(base)) + Decimal((n * 37 + day.day * 11) % 500) / 100
        amount = Decimal((n * 7919 + day.day) % 100_000 + 1) / 1_000_000
        rows.append(["binance", native, str(ts), str(ts + 5_000), str(day.day * 10**6 + n),
                     "buy" if n % 3 else "sell", str(price), str(amount)])
    return rows


class DatasetsHandler(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).requests.append((self.path, self.headers.get("Authorization", "")))
        parts = self.path.split("?")[0].strip("/").split("/")  # v1/binance/trades/2024/01/02/X.csv.gz
        try:
            _, exchange, data_type, year, month, day, name = parts
            native = name.removesuffix(".csv.gz")
            symbol = next(s for s, (n, _) in SYMBOLS.items() if n == native)
            when = date(int(year), int(month), int(day))
            assert exchange == "binance" and data_type == "trades" and when in DAYS
        except (ValueError, StopIteration, AssertionError):
            self.send_error(404, "no such dataset")
            return
        lines = [",".join(["exchange", "symbol", "timestamp", "local_timestamp", "id", "side",
                           "price", "amount"])]
        lines += [",".join(row) for row in _day_rows(native, SYMBOLS[symbol][1], when)]
        body = gzip.compress(("\n".join(lines) + "\n").encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def datasets_server() -> Iterator[str]:
    DatasetsHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), DatasetsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_datasets_downloaded_once_cached_and_backfilled(datasets_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TARDIS_API_KEY", "test-key")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    cache, out = tmp_path / "cache", tmp_path / "out"
    common = ["--exchange", "binance", "--symbols", "BTC-USDT,ETH-USDT", "--from", "2024-01-01",
              "--to", "2024-01-04", "--cache-dir", str(cache), "--endpoint", datasets_server]
    summary = backfill(*parse_args(common + ["--output-dir", str(out), "--timeframes", "1h,24h",
                                             "--feature-timeframes", "1h", "--workers", "2", "--quiet"]))
    paths = sorted(path for path, _ in DatasetsHandler.requests)
    assert paths == sorted(f"/v1/binance/trades/{d:%Y/%m/%d}/{n}.csv.gz"
                           for d in DAYS for n in ("BTCUSDT", "ETHUSDT"))
    assert {auth for _, auth in DatasetsHandler.requests} == {"Bearer test-key"}
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f"binance_trades_{d}_{n}.csv.gz" for d in DAYS for n in ("BTCUSDT", "ETHUSDT"))

    assert summary["files"] == 6 and summary["unique_ticks"] == 6 * TRADES_PER_DAY
    assert [(r["symbol"], r["day"], r["ticks"], r["dead_letters"]) for r in summary["per_day"]] == \
        [(s, f"{d}", TRADES_PER_DAY, 0) for s in SYMBOLS for d in DAYS]
    candles = _candles(out / "candles.jsonl")
    for symbol, (native, base) in SYMBOLS.items():
        days = [c for c in candles if c["symbol"] == symbol and c["timeframe"] == "24h"]
        assert [c["timestamp_in"][:10] for c in days] == [f"{d}" for d in DAYS]
        for candle, day in zip(days, DAYS):
            rows = _day_rows(native, base, day)
            volume = sum(Decimal(r[7]) for r in rows)
            quote = sum(Decimal(r[6]) * Decimal(r[7]) for r in rows)
            assert candle["trades"] == TRADES_PER_DAY and candle["volume"] == float(volume)
            assert candle["quote_volume"] == float(quote) and candle["vwap"] == float(Fraction(quote) / Fraction(volume))
            assert (candle["open"], candle["close"]) == (float(rows[0][6]), float(rows[-1][6]))
        hours = [c for c in candles if c["symbol"] == symbol and c["timeframe"] == "1h"]
        assert len(hours) == 72 and hours[-1]["window_end"] == "2024-01-04T00:00:00.000000Z"
        assert hours[30]["sma_5"] is not None  # one series over the three files

    # Again: everything comes from the cache, nothing is fetched twice.
    DatasetsHandler.requests.clear()
    assert main(["backfill", *common, "--download-only", "--quiet"]) == 0
    assert DatasetsHandler.requests == []
    assert len(capsys.readouterr().out.split()) == 6


def test_missing_dataset_day_is_reported_and_the_others_stay_cached(datasets_server, tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    args = parse_args(["--exchange", "binance", "--symbols", "BTC-USDT,DOGE-USDT", "--from",
                       "2024-01-01", "--to", "2024-01-02", "--cache-dir", str(tmp_path),
                       "--endpoint", datasets_server, "--download-only", "--quiet"])
    with pytest.raises(SystemExit, match="DOGE-USDT 2024-01-01: .*404"):
        backfill(*args)
    assert [p.name for p in tmp_path.iterdir()] == ["binance_trades_2024-01-01_BTCUSDT.csv.gz"]
