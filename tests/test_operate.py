"""mds status / tail / chart against the real local stand-ins (Pub/Sub emulator, bqemulator) and
a small replay-style candles.jsonl written here.
"""
from __future__ import annotations

import io
import json
import struct
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from ingest.message import iso_from_us
from pipelines.candle_rows import (latest_revisions, parse_utc, read_candles_jsonl, select_series)
from pipelines.cli import main
from pipelines.emulators import BigQueryEmulator, PubSubEmulator, free_port, pubsub_env
from pipelines.endpoints import Endpoints
from pipelines.local_names import LOCAL_PROJECT
from pipelines.status import check_dataflow
from transforms.schemas import CANDLE_COLUMNS
from transforms.sinks import format_candle_lines

PROJECT = LOCAL_PROJECT
START = datetime(2017, 8, 17, 4, 0, tzinfo=timezone.utc)


def iso(moment: datetime) -> str:
    return iso_from_us(int(moment.timestamp() * 1_000_000))


def candle(minute: int, close: float, revision: int = 0, timeframe: str = "1m", exchange: str = "binance",
           **extra: Any) -> dict[str, Any]:
    """A candle row with every CANDLE_FIELDS column, as the replay's candles.jsonl has them."""
    opened = START + timedelta(minutes=minute)
    row: dict[str, Any] = {name: None for name in CANDLE_COLUMNS}
    row.update(exchange=exchange, symbol="BTC-USDT", native_symbol="BTCUSDT", timeframe=timeframe,
               timestamp_in=iso(opened), window_end=iso(opened + timedelta(minutes=1)),
               open=close - 2.0, high=close + 3.0, low=close - 4.0, close=close, volume=1.5 + minute % 3,
               quote_volume=(1.5 + minute % 3) * close, trades=10 + minute, vwap=close - 0.5,
               buy_volume=1.0, sell_volume=0.5, buy_trades=6, sell_trades=4, is_gap=False,
               is_partial=minute == 0, is_final=True, revision=revision,
               timestamp_out=iso(opened + timedelta(minutes=1, seconds=2)), latency_ms=2000.0)
    row.update(extra)
    return row


@pytest.fixture()
def replay_dir(tmp_path: Path) -> Path:
    """30 one-minute candles, a superseded revision, a gap candle, features from minute 4 on,
    and rows of another timeframe that must not leak into a 1m chart."""
    rows = []
    for minute in range(30):
        close = 4300.0 + 10 * ((minute * 7) % 5) - minute
        features = {"sma_5": close - 1.0, "rsi_5": 55.0, "momentum_5": 0.001} if minute >= 4 else {}
        rows.append(candle(minute, close, **features))
    rows.append(candle(12, 9999.0, revision=0))  # superseded below by revision 1
    rows[12] = candle(12, 4350.0, revision=1, sma_5=4349.0)
    rows[20] = candle(20, rows[19]["close"], volume=0.0, trades=0, is_gap=True, vwap=None,
                      open=rows[19]["close"], high=rows[19]["close"], low=rows[19]["close"])
    rows.append(candle(0, 4200.0, timeframe="5m"))
    (tmp_path / "candles.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


# ---------------------------------------------------------------------------------------------
# Rows and console lines
# ---------------------------------------------------------------------------------------------

def test_latest_revision_wins_and_series_is_sorted(replay_dir: Path) -> None:
    rows = read_candles_jsonl(replay_dir)
    series = select_series(rows, "BTC-USDT", "1m")
    assert len(series) == 30
    assert [parse_utc(r["timestamp_in"]) for r in series] == [
        START + timedelta(minutes=m) for m in range(30)]
    assert series[12]["revision"] == 1 and series[12]["close"] == 4350.0
    assert select_series(rows, "BTC-USDT", "5m")[0]["close"] == 4200.0


def test_revision_order_does_not_depend_on_file_order() -> None:
    newer, older = candle(0, 2.0, revision=2), candle(0, 1.0, revision=1)
    assert latest_revisions([newer, older])[0]["close"] == 2.0
    assert latest_revisions([older, newer])[0]["close"] == 2.0


def test_several_exchanges_need_a_choice() -> None:
    rows = [candle(0, 1.0), candle(0, 2.0, exchange="coinbase")]
    with pytest.raises(ValueError, match="--exchange"):
        select_series(rows, "BTC-USDT", "1m")
    assert select_series(rows, "BTC-USDT", "1m", exchange="coinbase")[0]["close"] == 2.0


def test_seed_style_lines() -> None:
    row = candle(0, 67050.0, trades=156, volume=1.234, sma_5=67025.0, rsi_5=65.2, momentum_5=0.0012)
    row["timestamp_in"] = "2024-03-01T20:15:00.000000Z"
    assert format_candle_lines(row) == [
        "🕯️ 1m CANDLE: BTC-USDT 20:15:00 → 67050.00 (156 trades, 1.23 vol)",
        "📊 HFT Features: SMA(5)=67025, RSI(5)=65.2, Momentum=0.0012",
    ]


def test_lines_mark_gaps_revisions_provisional_and_hide_missing_features() -> None:
    row = candle(3, 0.012345, is_gap=True, revision=2, is_final=False, trades=0, volume=0.0)
    lines = format_candle_lines(row)
    assert lines == ["🕯️ 1m CANDLE: BTC-USDT 04:03:00 → 0.012345 (0 trades, 0.00 vol) [gap, provisional, rev 2]"]


def test_bad_json_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    (tmp_path / "candles.jsonl").write_text(json.dumps(candle(0, 1.0)) + "\n{oops\n")
    with pytest.raises(ValueError, match="candles.jsonl:2"):
        read_candles_jsonl(tmp_path)


# ---------------------------------------------------------------------------------------------
# chart
# ---------------------------------------------------------------------------------------------

def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def test_chart_png(replay_dir: Path, tmp_path: Path) -> None:
    out = io.StringIO()
    target = tmp_path / "charts" / "btc.png"
    code = main(["chart", "--symbol", "BTC-USDT", "--timeframe", "1m", "--input-dir", str(replay_dir),
                         "--features", "sma_5,ema_20", "--out", str(target)], console=out)
    assert code == 0 and "30 candles" in out.getvalue()
    width, height = png_size(target)
    assert (width, height) == (1200, 700)
    assert 20_000 < target.stat().st_size < 2_000_000


def test_chart_html_is_self_contained(replay_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "btc.html"
    code = main(["chart", "--symbol", "BTC-USDT", "--timeframe", "1m", "--input-dir", str(replay_dir),
                         "--features", "sma_5,ema_20", "--last", "25", "--out", str(target)], console=io.StringIO())
    assert code == 0
    page = target.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and page.rstrip().endswith("</html>")
    assert "<script" not in page and "src=" not in page and "href=" not in page
    assert page.count('<g class="') == 25
    assert page.count('<g class="gap">') == 1
    assert page.count("<polyline") == 1, "sma_5 has values; ema_20 has none and is only listed"
    assert "ema_20 (no values yet)" in page
    assert "BTC-USDT 1m (binance) · 25 candles" in page


def test_chart_rejects_unknown_features_and_formats(replay_dir: Path, tmp_path: Path) -> None:
    base = ["chart", "--symbol", "BTC-USDT", "--timeframe", "1m", "--input-dir", str(replay_dir)]
    with pytest.raises(SystemExit, match="unknown feature"):
        main(base + ["--features", "sma_7", "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match=".png or .html"):
        main(base + ["--out", str(tmp_path / "x.jpg")])


def test_chart_without_matching_candles_fails_cleanly(replay_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["chart", "--symbol", "ETH-USDT", "--timeframe", "1m", "--input-dir", str(replay_dir),
                         "--out", str(tmp_path / "x.png")])
    assert code == 2 and "no ETH-USDT 1m candles" in capsys.readouterr().err
    code = main(["chart", "--symbol", "BTC-USDT", "--timeframe", "1m", "--input-dir",
                         str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png")])
    assert code == 2 and "candles.jsonl not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# status, tail and chart --dataset against the emulators
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[PubSubEmulator, BigQueryEmulator]]:
    from pipelines.emulators import ensure_topic_and_subscription
    from transforms.bigquery import ensure_tables, make_client

    with PubSubEmulator() as pubsub, BigQueryEmulator(project=PROJECT) as bigquery:
        with pubsub_env(pubsub.host):
            ensure_topic_and_subscription(PROJECT, "candles")
        client = make_client(PROJECT, bigquery.endpoint)
        ensure_tables(client, f"{PROJECT}:market_data")
        rows = [candle(m, 4300.0 + m) for m in range(3)] + [candle(0, 1.0, revision=0)]
        rows[0]["revision"] = 1  # the 4th row is the superseded revision 0 of minute 0
        assert client.insert_rows_json(f"{PROJECT}.market_data.candles", rows) == []
        client.close()
        yield pubsub, bigquery


def test_status_reports_rows_and_newest_candle(stack: tuple[PubSubEmulator, BigQueryEmulator]) -> None:
    pubsub, bigquery = stack
    out = io.StringIO()
    code = main(["status", "--pubsub-host", pubsub.host, "--bigquery-endpoint", bigquery.endpoint],
                        console=out)
    report = out.getvalue()
    assert code == 0, report
    assert "OK  pubsub" in report and "candles" in report
    assert "OK  table candles" in report and "4 rows" in report
    assert "OK  table ticks" in report and "0 rows" in report
    assert "newest 1m candle" in report and "opened 2017-08-17T04:02:00+00:00" in report
    assert main(["status", "--quiet", "--pubsub-host", pubsub.host,
                         "--bigquery-endpoint", bigquery.endpoint], console=out) == 0


def test_status_fails_when_nothing_listens() -> None:
    out = io.StringIO()
    started = time.monotonic()
    code = main(["status", "--pubsub-host", f"127.0.0.1:{free_port()}",
                         "--bigquery-endpoint", f"http://127.0.0.1:{free_port()}"], console=out)
    assert code == 1
    assert "BAD pubsub" in out.getvalue() and "BAD bigquery" in out.getvalue()
    assert time.monotonic() - started < 30, "an unreachable stack must be reported quickly"


def test_dataflow_check_reads_gcloud_json() -> None:
    endpoints = Endpoints("quant-research-prod", "market_data", None, None, True, "us-central1")
    seen: list[list[str]] = []

    def gcloud(command: list[str]) -> str:
        seen.append(command)
        return json.dumps([{"id": "2026-11-25_01_00_00-123", "name": "mds-candles", "state": "Running"}])

    check = check_dataflow(endpoints, runner=gcloud)
    assert check.ok and "mds-candles Running (2026-11-25_01_00_00-123)" in check.detail
    assert seen[0][:4] == ["gcloud", "dataflow", "jobs", "list"]
    assert "--project=quant-research-prod" in seen[0] and "--status=active" in seen[0]
    assert not check_dataflow(endpoints, runner=lambda _c: "[]").ok


def test_chart_from_bigquery(stack: tuple[PubSubEmulator, BigQueryEmulator], tmp_path: Path) -> None:
    _, bigquery = stack
    target = tmp_path / "bq.html"
    code = main(["chart", "--symbol", "BTC-USDT", "--timeframe", "1m", "--dataset",
                         f"{PROJECT}:market_data", "--bigquery-endpoint", bigquery.endpoint,
                         "--out", str(target)], console=io.StringIO())
    assert code == 0
    page = target.read_text()
    assert page.count('<g class="') == 3
    assert "C 4300.00" in page and "C 1.00" not in page, "revision 1 of minute 0 must win"


def test_tail_prints_candles_and_cleans_up(stack: tuple[PubSubEmulator, BigQueryEmulator]) -> None:
    from google.cloud import pubsub_v1

    pubsub, _ = stack
    out = io.StringIO()
    result: dict[str, int] = {}
    tail = threading.Thread(target=lambda: result.setdefault("code", main(
        ["tail", "--pubsub-host", pubsub.host, "--duration", "40", "--max-messages", "3"], console=out)))
    with pubsub_env(pubsub.host):
        subscriber = pubsub_v1.SubscriberClient()
        publisher = pubsub_v1.PublisherClient()
        project_path = f"projects/{PROJECT}"

        def tail_subscriptions() -> list[str]:
            return [s.name for s in subscriber.list_subscriptions(request={"project": project_path})
                    if "/mds-tail-" in s.name]

        tail.start()
        deadline = time.monotonic() + 20
        while not tail_subscriptions():
            assert time.monotonic() < deadline, "tail never subscribed"
            time.sleep(0.2)
        topic = f"{project_path}/topics/candles"
        rows = [candle(5, 4305.0, sma_5=4301.0, rsi_5=61.0, momentum_5=0.002), candle(6, 4306.0)]
        for data in [json.dumps(r).encode() for r in rows] + [b"not json"]:
            publisher.publish(topic, data).result(timeout=10)
        tail.join(timeout=45)
        assert not tail.is_alive()
        assert tail_subscriptions() == [], "the temporary subscription must be deleted"
        subscriber.close()
    text = out.getvalue()
    assert result["code"] == 0, text
    assert "🕯️ 1m CANDLE: BTC-USDT 04:05:00 → 4305.00 (15 trades, 3.50 vol)" in text
    assert "📊 HFT Features: SMA(5)=4301, RSI(5)=61.0, Momentum=0.0020" in text
    assert "🕯️ 1m CANDLE: BTC-USDT 04:06:00 → 4306.00" in text
    assert "⚠️ not a candle row" in text
    assert text.rstrip().endswith("3 candles")


def test_tail_on_a_missing_topic(stack: tuple[PubSubEmulator, BigQueryEmulator]) -> None:
    pubsub, _ = stack
    out = io.StringIO()
    code = main(["tail", "--pubsub-host", pubsub.host, "--topic", "no-such-topic", "--duration", "5"],
                        console=out)
    assert code == 1 and "does not exist" in out.getvalue()


def test_chart_of_a_real_replay(tmp_path: Path) -> None:
    """The bundled Binance day through `mds replay`, then charted: the real output format."""
    import subprocess
    import sys

    out_dir = tmp_path / "replay"
    subprocess.run([sys.executable, "-m", "pipelines.cli", "replay", "--output-dir", str(out_dir), "--quiet"],
                   check=True, capture_output=True, timeout=240, cwd=Path(__file__).resolve().parent.parent)
    series = select_series(read_candles_jsonl(out_dir), "BTC-USDT", "4h")
    # Binance's own 4h candles for 2017-08-17 (tests/data/BTCUSDT-4h-official-2017-08-17.csv): the first one.
    assert parse_utc(series[0]["timestamp_in"]) == START
    assert (series[0]["open"], series[0]["close"]) == (4261.48, 4349.99)
    png, page = tmp_path / "day.png", tmp_path / "day.html"
    for target in (png, page):
        assert main(["chart", "--symbol", "BTC-USDT", "--timeframe", "1m", "--input-dir", str(out_dir),
                             "--features", "sma_20,ema_10,vwap", "--last", "0", "--out", str(target)],
                            console=io.StringIO()) == 0
    assert png_size(png) == (1200, 700)
    assert page.read_text().count('<g class="') == len(select_series(
        read_candles_jsonl(out_dir), "BTC-USDT", "1m"))
