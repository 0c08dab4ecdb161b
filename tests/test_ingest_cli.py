"""Both workers' command lines behave alike: names, flags, loud failures, console lines; and an
inverse contract's candle, from the workers' output through ``mds replay``, computed by hand."""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from ingest.publisher import DEFAULT_MAX_MESSAGE_BYTES
from pipelines.replay import parse_args, replay
from tests.ingest_harness import (WORKERS, LoopbackTardis, load_session, records_and_markers, run, run_both)

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js not installed")
SESSION_ARGS = ["--exchange", "bitmex", "--symbol", "BTC-USD-PERP"]


def _lines_file(tmp_path: Path, name: str = "bitmex") -> Path:
    source = tmp_path / f"{name}.lines"
    source.write_bytes(b"".join(load_session(name).tardis_lines()))
    return source


def test_okx_is_named_okx_in_both_and_okex_is_refused_with_the_reason(tmp_path: Path) -> None:
    """Issue 12 #5: Python took `okx`, Node `okex` (and exited 1 on `okx`)."""
    source = _lines_file(tmp_path, "okx")
    results = run_both(lambda w: ["--source", str(source), "--exchange", "okx", "--symbol", "BTC-USDT-PERP,BTC-USD-PERP",
                                  "--output", str(tmp_path / f"{w}.jsonl"), "--quiet"])
    for worker, result in results.items():
        assert result.returncode == 0, (worker, result.stderr[-2000:])
        records, _ = records_and_markers((tmp_path / f"{worker}.jsonl").read_text().splitlines())
        assert {r["exchange"] for r in records} == {"okx"}
    refused = run_both(lambda w: ["--source", str(source), "--exchange", "okex", "--symbol", "BTC-USDT"])
    for worker, result in refused.items():
        assert result.returncode == 2, worker
        assert "unknown exchange 'okex' (okex is Tardis.dev's name for okx)" in result.stderr, worker


@pytest.mark.parametrize("endpoint, code, message", [
    ("ftp://api.tardis.dev", 2, "--endpoint must be an https:// URL"),
    ("http://api.tardis.dev", 2, "--endpoint must use https://"),
])
def test_both_refuse_a_bad_endpoint_before_starting(endpoint: str, code: int, message: str) -> None:
    results = run_both(lambda w: [*SESSION_ARGS, "--from", "2024-11-24", "--to", "2024-11-24T00:01",
                                  "--endpoint", endpoint, "--output", "/dev/null"])
    for worker, result in results.items():
        assert result.returncode == code and message in result.stderr, (worker, result.stderr[-2000:])


def test_both_fail_loudly_and_at_once_when_the_endpoint_is_not_tardis(tmp_path: Path) -> None:
    """Issue 12 #5: Node's tardis-dev refused plain http and retried silently for 5 minutes; a
    wrong path was retried in silence by both clients. Now: one question, a clear error, exit 1."""
    session = load_session("bitmex")
    with LoopbackTardis(session, "not-bitmex", "trade") as tardis:
        started = time.monotonic()
        results = run_both(lambda w: [*SESSION_ARGS, "--from", "2024-11-24T08:15", "--to", "2024-11-24T08:17",
                                      "--endpoint", tardis.endpoint, "--output", str(tmp_path / f"{w}.jsonl")])
        elapsed = time.monotonic() - started
    for worker, result in results.items():
        assert result.returncode == 1, (worker, result.stderr[-2000:])
        assert re.search(r"does not answer http://127\.0\.0\.1:\d+/v1/exchanges/bitmex as Tardis.dev does "
                         r"\(HTTP 404", result.stderr), (worker, result.stderr[-2000:])
    assert elapsed < 60  # a 404 is not retried; the clients' slice retries would take minutes
    assert not [r for r in tardis.requests if "data-feeds" in r["path"]]


def test_from_without_a_zone_is_utc_in_both_whatever_the_local_zone(tmp_path: Path) -> None:
    """Issue 12 #5: Node read --from 00:00 as local time (05:00Z under America/New_York)."""
    session = load_session("bitmex")
    with LoopbackTardis(session, "bitmex", "trade") as tardis:
        results = run_both(lambda w: [*SESSION_ARGS, "--from", "2024-11-24T08:15", "--to", "2024-11-24T08:16",
                                      "--endpoint", tardis.endpoint, "--output", str(tmp_path / f"{w}.jsonl"),
                                      "--quiet", *(["--cache-dir", str(tmp_path / "c")] if w == "python" else [])],
                           env={"TZ": "America/New_York"})
    for worker, result in results.items():
        assert result.returncode == 0, (worker, result.stderr[-2000:])
    feeds = [r["query"]["from"] for r in tardis.requests if "data-feeds" in r["path"]]
    assert feeds == ["2024-11-24T08:15:00"] * 2


def test_both_print_the_same_candles_and_the_seed_lines(tmp_path: Path) -> None:
    """🚀 at start, 🟢 status, 🕯️ COMPLETED CANDLE per 1m (the same lines from both workers, by the
    pipeline's rules: [start, end) UTC windows, open/close by (timestamp, id)), partial when a
    disconnect fell in the window."""
    source = _lines_file(tmp_path, "binance")
    results = run_both(lambda w: ["--source", str(source), "--exchange", "binance", "--symbol", "BTC-USDT,OP-USDT",
                                  "--output", str(tmp_path / f"{w}.jsonl")])
    candles = {}
    for worker, result in results.items():
        assert result.returncode == 0, (worker, result.stderr[-2000:])
        assert re.search(r"^🚀 mds[ -]ingest: binance BTC-USDT,OP-USDT from file ", result.stdout, re.M), worker
        assert re.search(r"^🟢 \d\d:\d\d:\d\d \| BTC-USDT \| \$98210\.01 \|", result.stdout, re.M), worker
        candles[worker] = [line for line in result.stdout.splitlines() if line.startswith("🕯️")]
    assert candles["python"] == candles["node"] == [
        "🕯️ COMPLETED CANDLE binance BTC-USDT 1m 2024-11-24 08:15Z | O=98210.01 H=98211.0 L=98210.01 C=98211.0 | "
        "V=0.0115 | trades=2 (partial)",
        "🕯️ COMPLETED CANDLE binance OP-USDT 1m 2024-11-24 08:15Z | O=2.034 H=2.034 L=2.034 C=2.034 | "
        "V=120.5 | trades=1 (partial)",
        "🕯️ COMPLETED CANDLE binance BTC-USDT 1m 2024-11-24 08:16Z | O=98300.1 H=98300.1 L=98300.1 C=98300.1 | "
        "V=3.5 | trades=2 (partial)",
    ]  # the last two when the file ended


def test_the_message_byte_limit_is_one_flag_with_one_default_in_both() -> None:
    """Issue 11: cap messages by bytes as well as ticks, the same way in both workers."""
    assert DEFAULT_MAX_MESSAGE_BYTES == 1_000_000
    node_help = run("node", ["--help"])
    assert "[--max-message-bytes 1000000]" in node_help.stdout
    assert "--max-message-bytes" in run("python", ["--help"]).stdout
    for worker in WORKERS:
        result = run(worker, ["--source", "x.csv", "--max-message-bytes", "9000001"])
        assert result.returncode == 2 and "--max-message-bytes" in result.stderr, worker


def test_an_inverse_candle_from_the_workers_is_right_in_kind(tmp_path: Path) -> None:
    """XBTUSD contracts are worth 1 USD each: a 1m candle's volume is in BTC, its quote volume in USD.

    The three trades of 08:15 in the BitMEX session, by hand:
      100 contracts at 98210.5 (buy), 2500 at 98209.0 (sell), both at 08:15:01.998; 1 at 98205.0 (buy)
      at 08:15:40.250 (recovered from the partial after the reconnect).
      volume       = 100/98210.5 + 2500/98209.0 + 1/98205.0          BTC
      quote_volume = 100 + 2500 + 1 = 2601                            USD
      vwap         = 2601 / volume                                     USD per BTC
      open = 98210.5 (same time: the smaller id ...0002), close = 98205.0, high 98210.5, low 98205.0.
    Amounts in contracts (the old wire) made that volume 2601 "BTC" and quote_volume ~2.6e8.
    """
    source = _lines_file(tmp_path)
    results = run_both(lambda w: ["--source", str(source), *SESSION_ARGS, "--output", str(tmp_path / f"{w}.jsonl"),
                                  "--quiet"])
    assert all(result.returncode == 0 for result in results.values())
    assert (tmp_path / "python.jsonl").read_bytes() == (tmp_path / "node.jsonl").read_bytes()
    out = tmp_path / "replay"
    replay(parse_args(["--input", str(tmp_path / "python.jsonl"), "--output-dir", str(out), "--timeframes", "1m",
                       "--feature-timeframes", "1m", "--quiet", "--no-gap-candles"]))
    candles = [json.loads(line) for line in (out / "candles.jsonl").read_text().splitlines()]
    [candle] = [c for c in candles if c["timestamp_in"].startswith("2024-11-24T08:15")]
    volume = 100 / 98210.5 + 2500 / 98209.0 + 1 / 98205.0
    assert candle["symbol"] == "BTC-USD-PERP" and candle["trades"] == 3
    assert (candle["open"], candle["high"], candle["low"], candle["close"]) == (98210.5, 98210.5, 98205.0, 98205.0)
    assert candle["volume"] == pytest.approx(volume, rel=1e-12)
    assert candle["quote_volume"] == pytest.approx(2601, rel=1e-12)
    assert candle["vwap"] == pytest.approx(2601 / volume, rel=1e-12)
    assert candle["buy_volume"] == pytest.approx(100 / 98210.5 + 1 / 98205.0, rel=1e-12)
    assert candle["sell_volume"] == pytest.approx(2500 / 98209.0, rel=1e-12)
    assert candle["is_partial"]  # the feed was interrupted inside this minute
