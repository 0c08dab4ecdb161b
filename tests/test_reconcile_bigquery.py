"""The reconciliation in BigQuery (bqemulator on free loopback ports): `mds reconcile --dataset`
reads our candles from `candles_latest` and writes `candle_reconciliation`; the streaming step's
rows go through the pipeline's Storage Write API writer; `reconciliation_by_day` gives the match
rate per day and timeframe and the first differing field."""
from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Timestamp

from pipelines.demo import reconcile_sample
from pipelines.local_stack import BigQueryEmulator
from pipelines.reconcile import main
from reconcile.loopback import LoopbackVenue, binance_klines, load_klines
from tests.bigquery_helpers import MINUTE_US, PROJECT, T0_US, candle, query, table_path
from transforms.reconcile_candles import ReconcileCandles, ReconcileCandlesFn
from transforms import bigquery as bq
from transforms.bigquery_sink import STORAGE_WRITE_API, WriteRowsToBigQuery
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


def test_streamed_reconciliation_rows_reach_bigquery_through_the_storage_write_api(
        client: Any, dataset: str, beam_to_emulator: None) -> None:
    """The streaming step's rows written as the job writes them (the default Storage Write API
    writer, bqemulator's gRPC port): the view gives 3 of 4 minutes matched, the first difference
    at 04:02 in `close`; the table's rows are priced in rows_cost_by_day."""
    bq.ensure_views(client, dataset)
    candles = [candle(T0_US + minute * MINUTE_US, timestamp_in=T0_US + minute * MINUTE_US,
                      window_end=T0_US + (minute + 1) * MINUTE_US) for minute in range(4)]
    klines = [[(T0_US + minute * MINUTE_US) // 1000, "4261.00", "4263.00", "4260.00",
               "4262.50" if minute == 2 else "4262.00", "1.00000000",
               (T0_US + (minute + 1) * MINUTE_US) // 1000 - 1, "4262.00", 3, "0", "0", "0"] for minute in range(4)]
    with LoopbackVenue(binance_klines("BTCUSDT", {"1m": klines})) as venue:
        stream = (TestStream().advance_watermark_to(Timestamp(micros=T0_US))
                  .add_elements(candles).advance_watermark_to_infinity())
        pipeline = beam.Pipeline(options=PipelineOptions(project=PROJECT, streaming=True))
        reconciled = pipeline | stream | ReconcileCandles(ReconcileCandlesFn(120, {"binance": venue.endpoint}))
        _ = reconciled.rows | WriteRowsToBigQuery(RECONCILIATION_TABLE, dataset, method=STORAGE_WRITE_API)
        pipeline.run().wait_until_finish()
    [day] = query(client, f"SELECT * FROM `{table_path(dataset, 'reconciliation_by_day')}`")
    assert (day["timeframe"], day["candles"], day["matched"], day["mismatched"], day["match_rate"],
            day["first_difference"], day["first_difference_at"]) == (
        "1m", 4, 3, 1, 0.75, "close", datetime(2017, 8, 17, 4, 2, tzinfo=timezone.utc))
    rows = query(client, f"SELECT source, status, close, venue_close FROM "
                         f"`{table_path(dataset, RECONCILIATION_TABLE)}` WHERE status = 'mismatch'")
    assert rows == [{"source": "stream", "status": "mismatch", "close": 4262.0, "venue_close": 4262.5}]
    cost = {r["table_name"]: r["row_count"] for r in query(
        client, f"SELECT * FROM `{table_path(dataset, 'rows_cost_by_day')}`")}
    assert cost[RECONCILIATION_TABLE] == 4


def test_the_demos_proof_replays_the_day_into_bigquery_and_reconciles_it(
        emulator: BigQueryEmulator, client: Any, dataset: str, tmp_path: Path, capfd: Any) -> None:
    """`make demo`'s last step on its own: `mds replay` into BigQuery (Storage Write API), then
    `mds reconcile --dataset` against the bundled official klines on a loopback Binance API."""
    bq.ensure_views(client, dataset)
    env = dict(os.environ, **emulator.client_env())
    lines = reconcile_sample(client, env, str(tmp_path), dataset)
    out = capfd.readouterr().out
    assert "✅ reconciled 5/5 4h candles with binance 4h klines (BTCUSDT)" in out
    assert "✅ reconciled 1/1 24h candles with binance 1d klines (BTCUSDT)" in out
    assert lines == ["   reconciliation_by_day 2017-08-17  24h: 1/1 match (100%)",
                     "   reconciliation_by_day 2017-08-17   4h: 5/5 match (100%)"]
