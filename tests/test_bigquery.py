"""BigQuery output against the real local stand-in (bqemulator on free loopback ports).

One emulator per module (fixtures in conftest.py); every test uses its own dataset so tests do
not see each other's rows.
"""
from __future__ import annotations

import itertools
import json
import math
import uuid
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to

from ingest.message import iso_from_us, parse_time_us
from tests.bigquery_helpers import (MINUTE_US, PROJECT, T0_US, assert_ticks_stored_with_latency,
                                    candle, counter, dead_letters_by_id, query, table_path, tick)
from transforms import bigquery as bq
from transforms import schemas
from transforms.sinks import FinalizeRowsFn, finalize_row

INSERT_ALL = bq.STREAMING_INSERTS  # the tests of InsertRowsFn; the default writer: test_storage_write.py
# The REST API may spell legacy type names; the schema module uses Standard SQL names.
LEGACY_TYPES = {"FLOAT": "FLOAT64", "INTEGER": "INT64", "BOOLEAN": "BOOL"}


def insert(client: Any, dataset: str, table: str, rows: list[dict[str, Any]]) -> None:
    assert client.insert_rows_json(table_path(dataset, table), rows) == []


# ---------------------------------------------------------------------------------------------
# Tables and views
# ---------------------------------------------------------------------------------------------

def test_tables_have_schema_partitioning_and_clustering_and_second_call_is_a_no_op(client: Any) -> None:
    ref = f"{PROJECT}:tables_{uuid.uuid4().hex[:8]}"
    assert bq.ensure_tables(client, ref) == [schemas.TICKS_TABLE, schemas.CANDLES_TABLE,
                                             schemas.DEAD_LETTER_TABLE]
    created = {name: client.get_table(table_path(ref, name)).created for name in schemas.FIELDS}
    for name, fields in schemas.FIELDS.items():
        table = client.get_table(table_path(ref, name))
        got = [(f.name, LEGACY_TYPES.get(f.field_type, f.field_type), f.mode) for f in table.schema]
        assert got == [(f["name"], f["type"], f["mode"]) for f in fields]
        assert table.time_partitioning.type_ == "DAY"
        assert table.time_partitioning.field == schemas.TIME_PARTITIONING[name]["field"]
        assert table.clustering_fields == schemas.CLUSTERING[name]
    assert bq.ensure_tables(client, ref) == []
    assert {name: client.get_table(table_path(ref, name)).created for name in schemas.FIELDS} == created


def test_dataset_reference_forms() -> None:
    assert bq.split_dataset_ref("p:d") == ("p", "d")
    assert bq.split_dataset_ref("p.d") == ("p", "d")
    for bad in ("d", "p:", ":d", "p.d.t"):
        with pytest.raises(ValueError, match="PROJECT:DATASET"):
            bq.split_dataset_ref(bad)


def test_views_are_idempotent_and_return_the_right_numbers(client: Any, dataset: str) -> None:
    out_minute_us = T0_US + 10 * MINUTE_US
    # Ticks: 101 latencies 0..100 ms in one output minute -> exact percentiles 50, 95, 99.
    ticks = [dict(tick(i, T0_US + i), timestamp_out=iso_from_us(out_minute_us + i),
                  latency_ms=float(i)) for i in range(101)]
    insert(client, dataset, schemas.TICKS_TABLE, ticks)
    # Candles: 04:00 has revisions 0 and 1 (1 supersedes 0), 04:01 only revision 0; another
    # symbol at 05:00; a 15s candle that volume_by_hour must ignore.
    candles = [
        candle(T0_US, revision=0, volume=1.0, close=1.0),
        candle(T0_US, revision=1, volume=3.0, close=2.0, missing_trades=3, is_complete=False),
        candle(T0_US + MINUTE_US, revision=0, volume=5.0, close=3.0, missing_trades=0, is_complete=True),
        candle(T0_US + 60 * MINUTE_US, symbol="ETH-USDT", volume=7.0, missing_trades=None, is_complete=False),
        candle(T0_US, timeframe="15s", timeframe_us=15_000_000, volume=100.0),
    ]
    candles = [dict(c, timestamp_out=iso_from_us(parse_time_us(c["window_end"]) + 2_000_000),
                    latency_ms=2_000.0) for c in candles]
    insert(client, dataset, schemas.CANDLES_TABLE, candles)
    dead = [bq.dead_letter_row("parse", "bad JSON", "{not json")]
    insert(client, dataset, schemas.DEAD_LETTER_TABLE, dead)

    assert bq.ensure_views(client, dataset) == list(bq.VIEW_NAMES)
    assert bq.ensure_views(client, dataset) == list(bq.VIEW_NAMES)  # CREATE OR REPLACE
    ds = "`" + dataset.replace(":", ".")

    latest = query(client, f"SELECT symbol, timeframe, timestamp_in, revision, volume "
                           f"FROM {ds}.candles_latest` ORDER BY symbol, timeframe, timestamp_in")
    assert [(r["symbol"], r["timeframe"], r["revision"], r["volume"]) for r in latest] == [
        ("BTC-USDT", "15s", 0, 100.0), ("BTC-USDT", "1m", 1, 3.0), ("BTC-USDT", "1m", 0, 5.0),
        ("ETH-USDT", "1m", 0, 7.0)]
    assert "revision_rank" not in latest[0]

    current = query(client, f"SELECT symbol, timeframe, close, timestamp_in FROM {ds}.candles_current` "
                            f"ORDER BY symbol, timeframe")
    assert [(r["symbol"], r["timeframe"], r["close"]) for r in current] == [
        ("BTC-USDT", "15s", 4262.0), ("BTC-USDT", "1m", 3.0), ("ETH-USDT", "1m", 4262.0)]

    latency = {(r["source"], int(r["minute"].timestamp() * 1e6)): r
               for r in query(client, f"SELECT * FROM {ds}.latency_by_minute`")}
    tick_latency = latency.pop(("ticks", out_minute_us))
    assert tick_latency["row_count"] == 101
    assert (tick_latency["p50_ms"], tick_latency["p95_ms"], tick_latency["p99_ms"],
            tick_latency["max_ms"]) == (50.0, 95.0, 99.0, 100.0)
    # Candles are output 2 s after they close: 04:00:17 (15s), 04:01:02 (two revisions),
    # 04:02:02, 05:01:02.
    assert {(source, (minute - T0_US) // MINUTE_US): row["row_count"]
            for (source, minute), row in latency.items()} == {
        ("candles", 0): 1, ("candles", 1): 2, ("candles", 2): 1, ("candles", 61): 1}
    assert all(row["p50_ms"] == row["p99_ms"] == 2_000.0 for row in latency.values())

    volume = query(client, f"SELECT * FROM {ds}.volume_by_hour` ORDER BY hour, symbol")
    assert [(r["symbol"], r["volume"], r["trades"], r["candle_count"]) for r in volume] == [
        ("BTC-USDT", 8.0, 6, 2), ("ETH-USDT", 7.0, 3, 1)]
    assert volume[0]["hour"].timestamp() * 1e6 == T0_US
    assert volume[0]["vwap"] == pytest.approx(4262.0)

    complete = {(r["symbol"], r["timeframe"]): r for r in query(client, f"SELECT * FROM {ds}.completeness_by_day`")}
    btc = complete[("BTC-USDT", "1m")]  # 04:00 revision 1 (3 missing), 04:01 complete
    assert (btc["candle_count"], btc["complete_candles"], btc["candles_missing_trades"],
            btc["max_missing_trades"]) == (2, 1, 1, 3)
    assert complete[("ETH-USDT", "1m")]["max_missing_trades"] is None  # the venue cannot tell

    cost = {r["table_name"]: r for r in query(client, f"SELECT * FROM {ds}.rows_cost_by_day`")}
    for table, rows in ((schemas.TICKS_TABLE, ticks), (schemas.CANDLES_TABLE, candles),
                        (schemas.DEAD_LETTER_TABLE, dead)):
        sizes = [expected_row_bytes(table, row) for row in rows]
        assert cost[table]["row_count"] == len(rows)
        assert cost[table]["approx_bytes"] == sum(sizes)
        billed = sum(max(size, 1024) for size in sizes)
        assert cost[table]["billed_bytes"] == billed
        assert cost[table]["streaming_insert_usd"] == pytest.approx(billed / (200 * 2**20) * 0.01)
        assert cost[table]["storage_write_api_usd"] == pytest.approx(sum(sizes) / 2**30 * 0.025)


def test_unique_views_give_each_tick_and_candle_revision_once(client: Any, dataset: str) -> None:
    """Copies written by a retried append or bundle: same key, later timestamp_out. The views
    keep the first copy; rows_cost_by_day still counts every copy. A restarted job's rows (its
    own job_start, revisions from 0 again) are other rows, and the newest job's candle wins."""
    out_us = T0_US + 10 * MINUTE_US
    ticks = [dict(tick(i, T0_US + i), timestamp_out=iso_from_us(out_us + i), latency_ms=1.0)
             for i in range(5)]
    copies = [dict(ticks[1], timestamp_out=iso_from_us(out_us + 9_000), latency_ms=9.0),
              dict(ticks[1], timestamp_out=iso_from_us(out_us + 8_000), latency_ms=8.0),
              dict(ticks[3], timestamp_out=iso_from_us(out_us + 7_000), latency_ms=7.0)]
    other_exchange = dict(ticks[0], exchange="coinbase")  # same id elsewhere: another trade
    insert(client, dataset, schemas.TICKS_TABLE, copies + ticks + [other_exchange])
    job, restarted_job = iso_from_us(out_us - MINUTE_US), iso_from_us(out_us + MINUTE_US)
    revisions = [dict(candle(T0_US, revision=r, volume=float(r + 1)), job_start=job,
                      timestamp_out=iso_from_us(out_us + r), latency_ms=100.0) for r in range(3)]
    candle_copies = [dict(revisions[2], timestamp_out=iso_from_us(out_us + 50), latency_ms=900.0),
                     dict(revisions[0], timestamp_out=iso_from_us(out_us + 60), latency_ms=900.0)]
    replayed = dict(revisions[0], job_start=restarted_job, volume=4.0,
                    timestamp_out=iso_from_us(out_us + 2 * MINUTE_US))
    insert(client, dataset, schemas.CANDLES_TABLE, candle_copies + revisions + [replayed])
    bq.ensure_views(client, dataset)
    ds = "`" + dataset.replace(":", ".")

    unique_ticks = query(client, f"SELECT exchange, id, latency_ms FROM {ds}.ticks_unique` "
                                 f"ORDER BY exchange, id")
    assert [(r["exchange"], r["id"], r["latency_ms"]) for r in unique_ticks] == [
        ("binance", str(i), 1.0) for i in range(5)] + [("coinbase", "0", 1.0)]
    assert "copy_rank" not in unique_ticks[0]
    assert set(query(client, f"SELECT * FROM {ds}.ticks_unique` LIMIT 1")[0]) == set(
        schemas.TICK_COLUMNS)

    unique_candles = query(client, f"SELECT revision, volume, latency_ms FROM {ds}.candles_unique` "
                                   f"ORDER BY job_start, revision")
    assert [(r["revision"], r["volume"], r["latency_ms"]) for r in unique_candles] == [
        (0, 1.0, 100.0), (1, 2.0, 100.0), (2, 3.0, 100.0), (0, 4.0, 100.0)]
    latest = query(client, f"SELECT revision, volume, job_start FROM {ds}.candles_latest`")
    assert [(r["revision"], r["volume"]) for r in latest] == [(0, 4.0)]  # the restarted job's
    assert set(query(client, f"SELECT * FROM {ds}.candles_latest`")[0]) == set(schemas.CANDLE_COLUMNS)

    latency = query(client, f"SELECT source, SUM(row_count) AS n, MAX(max_ms) AS max_ms "
                            f"FROM {ds}.latency_by_minute` GROUP BY source")
    assert {r["source"]: (r["n"], r["max_ms"]) for r in latency} == {"ticks": (6, 1.0),
                                                                     "candles": (4, 100.0)}
    cost = {r["table_name"]: r["row_count"] for r in query(client, f"SELECT * FROM {ds}.rows_cost_by_day`")}
    assert cost == {"ticks": 9, "candles": 6}


def expected_row_bytes(table: str, row: dict[str, Any]) -> int:
    """BigQuery's data size rules, computed independently of the view's SQL."""
    size = 0
    for field in schemas.FIELDS[table]:
        value = row.get(field["name"])
        if value is None:
            continue
        if field["type"] == "STRING":
            size += 2 + len(value.encode("utf-8"))
        else:
            size += 1 if field["type"] == "BOOL" else 8
    return size


# ---------------------------------------------------------------------------------------------
# Row helpers
# ---------------------------------------------------------------------------------------------

def test_finalize_row_sets_timestamp_out_and_latency() -> None:
    row = candle(T0_US)
    stamped = finalize_row(row, schemas.CANDLES_TABLE, now_us=T0_US + MINUTE_US + 1_500)
    assert stamped["timestamp_out"] == "2017-08-17T04:01:00.001500Z"
    assert stamped["latency_ms"] == 1.5
    assert "timestamp_out" not in row  # the input row is not mutated
    unparseable = finalize_row(tick(1, T0_US, timestamp="yesterday"), schemas.TICKS_TABLE)
    assert unparseable["latency_ms"] is None and unparseable["timestamp_out"].endswith("Z")


@pytest.mark.parametrize("row, reason", [
    (tick(1, T0_US), None),
    ({k: v for k, v in tick(1, T0_US).items() if k != "price"}, "REQUIRED column 'price'"),
    (tick(1, T0_US, side=None), "REQUIRED column 'side'"),
    (tick(1, T0_US, bogus=1), "unknown columns for table ticks: bogus"),
    (tick(1, T0_US, timestamp=1502942400.5), "must be an ISO-8601 string"),
    (tick(1, T0_US, timestamp="1502942400"), "must be an ISO-8601 string"),
    (tick(1, T0_US, local_timestamp="17/08/2017"), "TIMESTAMP column 'local_timestamp'"),
    (tick(1, T0_US, amount=math.nan), "column 'amount' is not finite"),
    (tick(1, T0_US, latency_ms=math.inf), "column 'latency_ms' is not finite"),
])
def test_row_problem(row: dict[str, Any], reason: str | None) -> None:
    problem = bq.row_problem(row, schemas.TICKS_TABLE)
    if reason is None:
        assert problem is None
    else:
        assert reason in problem


def test_write_transform_rejects_unknown_table() -> None:
    with pytest.raises(ValueError, match="unknown table 'trades'"):
        bq.WriteRowsToBigQuery("trades", "p:d")


# ---------------------------------------------------------------------------------------------
# insertAll writer (DirectRunner)
# ---------------------------------------------------------------------------------------------

def test_batch_pipeline_writes_rows_and_dead_letters_failures(client: Any, dataset: str,
                                                              beam_to_emulator: None) -> None:
    good = [tick(i, T0_US + i * 1_000_000) for i in range(20)]
    type_error = tick(100, T0_US, price="not-a-number")  # BigQuery itself rejects it
    missing = {k: v for k, v in tick(101, T0_US).items() if k != "side"}  # caught before insert
    not_finite = tick(102, T0_US, amount=math.inf)
    pipeline = beam.Pipeline(options=PipelineOptions(project=PROJECT))
    dead = (pipeline
            | "Ticks" >> beam.Create(good + [type_error, missing, not_finite])
            | "Finish" >> beam.ParDo(FinalizeRowsFn(schemas.TICKS_TABLE))
            | "Write" >> bq.WriteRowsToBigQuery(schemas.TICKS_TABLE, dataset, method=INSERT_ALL))
    assert_that(dead | beam.Map(lambda r: (r["stage"], json.loads(r["payload"])["id"])),
                equal_to([("bigquery_insert", "100"), ("bigquery_insert", "101"),
                          ("bigquery_insert", "102")]))
    result = pipeline.run()
    result.wait_until_finish()

    assert_ticks_stored_with_latency(client, dataset, list(range(20)))

    dead_rows = dead_letters_by_id(client, dataset)
    assert set(dead_rows) == {"100", "101", "102"}
    assert all(r["stage"] == "bigquery_insert" for r in dead_rows.values())
    assert "invalid" in dead_rows["100"]["reason"]  # the server's verdict, not ours
    assert json.loads(dead_rows["100"]["payload"])["price"] == "not-a-number"
    assert "REQUIRED column 'side'" in dead_rows["101"]["reason"]
    assert "not finite" in dead_rows["102"]["reason"]
    assert json.loads(dead_rows["100"]["attributes"])["table"] == "ticks"
    assert dead_rows["100"]["event_time"].timestamp() * 1e6 == T0_US
    assert counter(result, "ticks_insert_failed") == 1
    assert counter(result, "ticks_rows_rejected") == 2


@pytest.mark.parametrize("method", bq.WRITE_METHODS)
def test_unwritable_dead_letters_are_counted_not_lost_silently(client: Any, dataset: str,
                                                               beam_to_emulator: None, method: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    good = bq.dead_letter_row("parse", "bad JSON", "{oops")
    no_reason = dict(bq.dead_letter_row("parse", "x", "{oops2"), reason=None)
    pipeline = beam.Pipeline(options=PipelineOptions(project=PROJECT))
    _ = (pipeline | beam.Create([good, no_reason])
         | bq.WriteRowsToBigQuery(schemas.DEAD_LETTER_TABLE, dataset, method=method))
    result = pipeline.run()
    result.wait_until_finish()
    stored = query(client, f"SELECT payload FROM `{table_path(dataset, schemas.DEAD_LETTER_TABLE)}`")
    assert [r["payload"] for r in stored] == ["{oops"]
    assert counter(result, "dead_letter_rows_rejected") == 1
    assert counter(result, "dead_letter_rows_unwritable") == 1
    assert any("{oops2" in record.getMessage() for record in caplog.records)


def test_missing_tables_dead_letter_then_log_instead_of_crashing(client: Any, beam_to_emulator: None,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    empty = f"{PROJECT}:empty_{uuid.uuid4().hex[:8]}"
    client.create_dataset(empty.replace(":", "."))
    pipeline = beam.Pipeline(options=PipelineOptions(project=PROJECT))
    dead = (pipeline | beam.Create([tick(i, T0_US) for i in range(3)])
            | bq.WriteRowsToBigQuery(schemas.TICKS_TABLE, empty, method=INSERT_ALL))
    assert_that(dead | beam.Map(lambda r: ("Not found" in r["reason"], r["stage"])),
                equal_to([(True, "bigquery_insert")] * 3))
    result = pipeline.run()
    result.wait_until_finish()
    assert counter(result, "ticks_insert_failed") == 3
    assert counter(result, "dead_letter_rows_unwritable") == 3
    logged = [json.loads(r.getMessage().split(": ", 1)[1]) for r in caplog.records
              if "could not be written" in r.getMessage()]
    # Each log line holds the whole dead-letter row, which holds the original tick.
    original_ids = [json.loads(json.loads(row["payload"])["payload"])["id"] for row in logged]
    assert sorted(original_ids) == ["0", "1", "2"]


def test_streaming_pipeline_writes_candles_with_latency(client: Any, dataset: str,
                                                        beam_to_emulator: None) -> None:
    candles = [candle(T0_US + i * MINUTE_US) for i in range(6)]
    bad = candle(T0_US + 10 * MINUTE_US, trades="many")  # INT64 column: BigQuery rejects it
    stream = (test_stream.TestStream()
              .advance_watermark_to(T0_US / 1e6)
              .add_elements(candles[:3])
              .advance_processing_time(5)
              .add_elements(candles[3:] + [bad])
              .advance_watermark_to_infinity())
    options = PipelineOptions(project=PROJECT, streaming=True)
    pipeline = beam.Pipeline(options=options)
    _ = (pipeline | stream
         | beam.ParDo(FinalizeRowsFn(schemas.CANDLES_TABLE))
         | bq.WriteRowsToBigQuery(schemas.CANDLES_TABLE, dataset, method=INSERT_ALL))
    pipeline.run().wait_until_finish()

    written = query(client, f"SELECT timestamp_in, window_end, timestamp_out, latency_ms "
                            f"FROM `{table_path(dataset, schemas.CANDLES_TABLE)}` ORDER BY timestamp_in")
    assert [r["timestamp_in"].timestamp() * 1e6 for r in written] == [
        T0_US + i * MINUTE_US for i in range(6)]
    for row in written:
        assert row["latency_ms"] == pytest.approx(
            (row["timestamp_out"] - row["window_end"]).total_seconds() * 1e3, abs=0.001)
    dead = query(client, f"SELECT stage, reason, payload FROM "
                         f"`{table_path(dataset, schemas.DEAD_LETTER_TABLE)}`")
    assert len(dead) == 1 and dead[0]["stage"] == "bigquery_insert"
    assert json.loads(dead[0]["payload"])["trades"] == "many"


def test_row_batches_are_cut_into_requests_and_oversize_rows_dead_lettered(
        client: Any, dataset: str, beam_to_emulator: None) -> None:
    """One element of 1,234 tick rows (batched input) takes three requests and lands whole; a
    row over the request size limit is a dead letter, not a failed request."""
    rows = [tick(i, T0_US + i * 1_000) for i in range(1_234)]
    huge = tick(9_999, T0_US, native_symbol="X" * (bq.MAX_REQUEST_BYTES + 1))
    pipeline = beam.Pipeline(options=PipelineOptions(project=PROJECT))
    dead = (pipeline | beam.Create([rows + [huge]])
            | bq.WriteRowsToBigQuery(schemas.TICKS_TABLE, dataset, batched=True, method=INSERT_ALL))
    assert_that(dead | beam.Map(lambda r: (r["stage"], "exceeds" in r["reason"])),
                equal_to([("bigquery_insert", True)]))
    result = pipeline.run()
    result.wait_until_finish()
    count = query(client, f"SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS ids "
                          f"FROM `{table_path(dataset, schemas.TICKS_TABLE)}`")
    assert (count[0]["n"], count[0]["ids"]) == (1_234, 1_234)
    assert counter(result, "ticks_rows_inserted") == 1_234
    assert counter(result, "ticks_rows_rejected") == 1


@pytest.mark.parametrize("method", bq.WRITE_METHODS)
def test_batch_write_throughput(client: Any, dataset: str, beam_to_emulator: None,
                                method: str) -> None:
    """2,000 ticks through the sink in one run: all land, none twice (timing printed with -s)."""
    import time

    ids = itertools.count()
    rows = [tick(next(ids), T0_US + i * 1_000) for i in range(2_000)]
    pipeline = beam.Pipeline(options=PipelineOptions(project=PROJECT))
    _ = pipeline | beam.Create(rows) | bq.WriteRowsToBigQuery(schemas.TICKS_TABLE, dataset,
                                                              method=method)
    started = time.monotonic()
    pipeline.run().wait_until_finish()
    elapsed = time.monotonic() - started
    count = query(client, f"SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS ids "
                          f"FROM `{table_path(dataset, schemas.TICKS_TABLE)}`")
    assert (count[0]["n"], count[0]["ids"]) == (2_000, 2_000)
    print(f"\n2,000 ticks via WriteRowsToBigQuery({method}, DirectRunner batch): {elapsed:.2f}s")
