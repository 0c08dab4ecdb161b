"""`mds reconcile --dataset` against the local BigQuery API server (bqemulator on free loopback
ports): our candles read from `candles_latest`, the comparison written to `candle_reconciliation`,
the match rate per day and timeframe read back from `reconciliation_by_day`."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import pytest

from pipelines.local_stack import BigQueryEmulator
from pipelines.reconcile import main
from reconcile.loopback import LoopbackVenue, binance_klines, load_klines
from tests.bigquery_helpers import PROJECT
from transforms import bigquery as bq
from transforms.schemas import CANDLES_TABLE, RECONCILIATION_TABLE


def by_timeframe(client: Any, dataset: str) -> dict[str, dict[str, Any]]:
    table = dataset.replace(":", ".")
    return {row["timeframe"]: dict(row.items()) for row in client.query(
        f"SELECT * FROM `{table}.reconciliation_by_day` ORDER BY timeframe").result()}


def test_the_table_and_view_give_the_match_rate_and_the_first_difference(
        emulator: BigQueryEmulator, client: Any, sample_replay: dict[str, Any]) -> None:
    dataset = f"{PROJECT}:rec_{uuid.uuid4().hex[:8]}"
    bq.ensure_tables(client, dataset)
    bq.ensure_views(client, dataset)
    candles = [row for row in sample_replay["candles"] if row["timeframe"] in ("4h", "24h")]
    assert client.insert_rows_json(f"{dataset.replace(':', '.')}.{CANDLES_TABLE}", candles) == []
    official = load_klines()
    argv = ["--exchange", "binance", "--symbol", "BTC-USDT", "--timeframe", "4h,24h", "--from", "2017-08-17",
            "--to", "2017-08-18", "--dataset", dataset, "--bigquery-endpoint", emulator.endpoint]
    with LoopbackVenue(binance_klines(official["symbol"], official["klines"])) as venue:
        assert main(argv + ["--endpoint", venue.endpoint]) == 0
        day = by_timeframe(client, dataset)
        assert {tf: (r["candles"], r["matched"], r["match_rate"], r["first_difference"]) for tf, r in day.items()} == {
            "4h": (5, 5, 1.0, None), "24h": (1, 1, 1.0, None)}
        # A correction of the 12:00 candle (revision 1) that Binance's kline does not share
        corrected = next(dict(c, revision=1, volume=c["volume"] + 0.5) for c in candles
                         if c["timeframe"] == "4h" and c["timestamp_in"].startswith("2017-08-17T12:00"))
        assert client.insert_rows_json(f"{dataset.replace(':', '.')}.{CANDLES_TABLE}", [corrected]) == []
        assert main(argv + ["--endpoint", venue.endpoint]) == 1
    day = by_timeframe(client, dataset)
    four = day["4h"]
    assert (four["day"].isoformat(), four["candles"], four["matched"], four["mismatched"], four["match_rate"]) == \
        ("2017-08-17", 5, 4, 1, 0.8)
    assert (four["first_difference"], four["first_difference_at"]) == (
        "volume", datetime(2017, 8, 17, 12, tzinfo=timezone.utc))
    assert day["24h"]["match_rate"] == 1.0  # its newest comparison matched again
    rows = [dict(r.items()) for r in client.query(
        f"SELECT * FROM `{dataset.replace(':', '.')}.{RECONCILIATION_TABLE}` WHERE status = 'mismatch'").result()]
    assert [(r["candle_revision"], r["volume"] - r["venue_volume"], r["source"]) for r in rows] == [
        (1, pytest.approx(0.5), f"bigquery:{dataset}")]
