"""The Storage Write API writer against bqemulator's gRPC server (free loopback ports), plus the
answers bqemulator never gives (per-row errors, in-band transient errors) from a scripted client.

One emulator per module (fixtures in conftest.py); every test writes to its own dataset.
"""
from __future__ import annotations

import json
import math
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from google.api_core import exceptions as api_exceptions
from google.cloud import bigquery
from google.cloud.bigquery_storage_v1 import types

from ingest.message import iso_from_us, parse_time_us
from pipelines.emulators import BigQueryEmulator
from tests.bigquery_helpers import (MINUTE_US, PROJECT, T0_US, assert_ticks_stored_with_latency,
                                    candle, counter, dead_letters_by_id, decode, query, table_path,
                                    tick)
from tests.reliability_helpers import PersistentBigQueryEmulator
from transforms import bigquery as bq
from transforms import schemas, storage_write
from transforms.proto_rows import RowEncoder
from transforms.sinks import FinalizeRowsFn, finalize_row
from transforms.storage_write import (Appender, PendingStream, commit_streams, make_write_client)
from transforms.storage_write_sink import PendingStreams


@pytest.fixture(scope="module")
def write_client(emulator: BigQueryEmulator) -> Any:
    return make_write_client(emulator.grpc_host)


def write_path(dataset: str, table: str) -> str:
    """The Storage Write API's name of a table of a PROJECT:DATASET."""
    return storage_write.table_path(*dataset.split(":"), table)


def count(client: Any, dataset: str, table: str) -> tuple[int, int]:
    """(rows, distinct ids) of ``ticks``, or (rows, rows) of another table."""
    distinct = "COUNT(DISTINCT id)" if table == schemas.TICKS_TABLE else "COUNT(*)"
    row = query(client, f"SELECT COUNT(*) AS n, {distinct} AS d FROM `{table_path(dataset, table)}`")[0]
    return row["n"], row["d"]


def encoded(table: str, rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], bytes]]:
    encoder = RowEncoder(table)
    finished = [finalize_row(row, table) for row in rows]
    return [(row, encoder.encode(row)) for row in finished]


def run(pipeline: beam.Pipeline) -> Any:
    result = pipeline.run()
    result.wait_until_finish()
    return result


# ---------------------------------------------------------------------------------------------
# Default stream (streaming jobs)
# ---------------------------------------------------------------------------------------------

def test_default_stream_writes_rows_and_dead_letters_what_cannot_be_stored(
        client: Any, dataset: str, beam_to_emulator: None) -> None:
    good = [tick(i, T0_US + i * 1_000_000) for i in range(20)]
    wrong_type = tick(100, price="not-a-number")
    missing = {k: v for k, v in tick(101).items() if k != "side"}
    not_finite = tick(102, amount=math.inf)
    pipeline = beam.Pipeline(options=PipelineOptions(project=PROJECT))
    dead = (pipeline
            | beam.Create(good + [wrong_type, missing, not_finite])
            | beam.ParDo(FinalizeRowsFn(schemas.TICKS_TABLE))
            | bq.WriteRowsToBigQuery(schemas.TICKS_TABLE, dataset))  # the default method
    assert_that(dead | beam.Map(lambda r: (r["stage"], json.loads(r["payload"])["id"])),
                equal_to([("bigquery_insert", "100"), ("bigquery_insert", "101"),
                          ("bigquery_insert", "102")]))
    result = run(pipeline)

    assert_ticks_stored_with_latency(client, dataset, list(range(20)))
    dead_rows = dead_letters_by_id(client, dataset)
    assert set(dead_rows) == {"100", "101", "102"}
    assert "FLOAT64 column 'price' got str 'not-a-number'" in dead_rows["100"]["reason"]
    assert json.loads(dead_rows["100"]["payload"])["price"] == "not-a-number"
    assert "REQUIRED column 'side'" in dead_rows["101"]["reason"]
    assert "not finite" in dead_rows["102"]["reason"]
    assert json.loads(dead_rows["100"]["attributes"]) == {"table": "ticks"}
    assert dead_rows["100"]["event_time"].timestamp() * 1e6 == T0_US
    assert counter(result, "ticks_rows_appended") == 20
    assert counter(result, "ticks_rows_rejected") == 3
    assert counter(result, "dead_letter_rows_appended") == 3
    assert counter(result, "ticks_append_bytes") == sum(
        len(data) for _, data in encoded(schemas.TICKS_TABLE, good))


def test_streaming_pipeline_appends_candles_to_the_default_stream(
        client: Any, dataset: str, beam_to_emulator: None) -> None:
    candles = [candle(T0_US + i * MINUTE_US) for i in range(6)]
    stream = (test_stream.TestStream()
              .advance_watermark_to(T0_US / 1e6)
              .add_elements(candles[:3])
              .advance_processing_time(5)
              .add_elements(candles[3:] + [candle(T0_US + 10 * MINUTE_US, trades="many")])
              .advance_watermark_to_infinity())
    pipeline = beam.Pipeline(options=PipelineOptions(project=PROJECT, streaming=True))
    _ = (pipeline | stream
         | beam.ParDo(FinalizeRowsFn(schemas.CANDLES_TABLE))
         | bq.WriteRowsToBigQuery(schemas.CANDLES_TABLE, dataset))
    run(pipeline)
    written = query(client, f"SELECT timestamp_in, window_end, timestamp_out, latency_ms, trades, "
                            f"is_gap, vwap FROM `{table_path(dataset, schemas.CANDLES_TABLE)}` "
                            f"ORDER BY timestamp_in")
    assert [r["timestamp_in"].timestamp() * 1e6 for r in written] == [
        T0_US + i * MINUTE_US for i in range(6)]
    for row in written:
        assert (row["trades"], row["is_gap"], row["vwap"]) == (3, False, 4262.0)
        assert row["latency_ms"] == pytest.approx(
            (row["timestamp_out"] - row["window_end"]).total_seconds() * 1e3, abs=0.001)
    dead = query(client, f"SELECT reason, payload FROM `{table_path(dataset, schemas.DEAD_LETTER_TABLE)}`")
    assert len(dead) == 1 and "INT64 column 'trades' got str 'many'" in dead[0]["reason"]


def test_rows_the_server_refuses_are_found_by_splitting_and_dead_lettered(
        client: Any, beam_to_emulator: None) -> None:
    """A deployed table that drifted from the schemas module (``id`` INT64): the server refuses
    a whole request for one bad row; splitting finds the rows it refuses, the others land."""
    ref = f"{PROJECT}:drift_{uuid.uuid4().hex[:8]}"
    bq.ensure_tables(client, ref)
    client.delete_table(table_path(ref, schemas.TICKS_TABLE))
    fields = [dict(f, type="INT64") if f["name"] == "id" else f for f in schemas.TICK_FIELDS]
    client.create_table(bigquery.Table(table_path(ref, schemas.TICKS_TABLE),
                                       schema=[bigquery.SchemaField.from_api_repr(f) for f in fields]))
    ids = [str(i) if i % 50 else f"x{i}" for i in range(300)]  # 6 ids are not numbers
    pipeline = beam.Pipeline(options=PipelineOptions(project=PROJECT))
    _ = (pipeline | beam.Create([[tick(i) for i in ids]])
         | bq.WriteRowsToBigQuery(schemas.TICKS_TABLE, ref, batched=True))
    result = run(pipeline)
    stored = query(client, f"SELECT id FROM `{table_path(ref, schemas.TICKS_TABLE)}`")
    assert sorted(r["id"] for r in stored) == sorted(int(i) for i in ids if i.isdigit())
    dead = dead_letters_by_id(client, ref)
    assert sorted(dead) == sorted(i for i in ids if not i.isdigit())
    assert all(d["reason"].startswith("INVALID_ARGUMENT: ") and "x" in d["reason"]
               for d in dead.values())  # the server's own words
    assert counter(result, "ticks_append_failed") == 6
    assert counter(result, "ticks_rows_appended") == 294


def test_oversized_row_is_dead_lettered_without_a_request(client: Any, dataset: str,
                                                          beam_to_emulator: None) -> None:
    rows = [tick(i) for i in range(1_234)]
    huge = tick(9_999, side="X" * (storage_write.MAX_REQUEST_BYTES + 1))
    pipeline = beam.Pipeline(options=PipelineOptions(project=PROJECT))
    dead = (pipeline | beam.Create([rows + [huge]])
            | bq.WriteRowsToBigQuery(schemas.TICKS_TABLE, dataset, batched=True))
    assert_that(dead | beam.Map(lambda r: ("AppendRows request limit" in r["reason"],
                                           '"id":"9999"' in r["payload"])),
                equal_to([(True, True)]))
    result = run(pipeline)
    assert count(client, dataset, schemas.TICKS_TABLE) == (1_234, 1_234)
    assert counter(result, "ticks_rows_rejected") == 1
    # Its dead-letter row (payload cut to dead_letter.MAX_PAYLOAD_CHARS) is stored.
    assert count(client, dataset, schemas.DEAD_LETTER_TABLE) == (1, 1)


def test_big_batches_are_cut_into_requests_under_the_limit(client: Any, dataset: str,
                                                           write_client: Any) -> None:
    """Rows of ~400 KB: 60 of them (24 MB) must go as several requests, none over the limit."""
    rows = [tick(i, native_symbol="S" * 400_000) for i in range(60)]
    appender = Appender(write_client, write_path(dataset, schemas.TICKS_TABLE) + "/streams/_default",
                        RowEncoder(schemas.TICKS_TABLE).descriptor)
    assert appender.append(encoded(schemas.TICKS_TABLE, rows)) == []
    assert count(client, dataset, schemas.TICKS_TABLE) == (60, 60)
    assert appender.retries == 0


@pytest.mark.parametrize("pending", [False, True], ids=["default-stream", "pending-streams"])
def test_missing_tables_dead_letter_then_log_instead_of_crashing(
        client: Any, beam_to_emulator: None, pending: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    empty = f"{PROJECT}:empty_{uuid.uuid4().hex[:8]}"
    client.create_dataset(empty.replace(":", "."))
    pipeline = beam.Pipeline(options=PipelineOptions(project=PROJECT))
    streams = PendingStreams() if pending else None
    dead = (pipeline | beam.Create([tick(i) for i in range(3)])
            | bq.WriteRowsToBigQuery(schemas.TICKS_TABLE, empty, pending=streams))
    if streams is not None:
        streams.commit()
    assert_that(dead | beam.Map(lambda r: (r["reason"].startswith("404 "), r["stage"])),
                equal_to([(True, "bigquery_insert")] * 3))
    result = run(pipeline)
    assert counter(result, "ticks_append_failed") == 3
    assert counter(result, "dead_letter_rows_unwritable") == 3
    logged = [json.loads(r.getMessage().split(": ", 1)[1]) for r in caplog.records
              if "could not be written" in r.getMessage()]
    assert sorted(json.loads(json.loads(row["payload"])["payload"])["id"] for row in logged) == [
        "0", "1", "2"]


def test_a_local_rest_endpoint_without_the_grpc_one_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", "http://127.0.0.1:9050")
    monkeypatch.delenv("BIGQUERY_STORAGE_EMULATOR_HOST", raising=False)
    with pytest.raises(RuntimeError, match="BIGQUERY_STORAGE_EMULATOR_HOST is not set"):
        storage_write.storage_emulator_host()
    monkeypatch.setenv("BIGQUERY_STORAGE_EMULATOR_HOST", "127.0.0.1:9060")
    assert storage_write.storage_emulator_host() == "127.0.0.1:9060"


# ---------------------------------------------------------------------------------------------
# PENDING streams (bounded runs)
# ---------------------------------------------------------------------------------------------

def test_pending_rows_are_invisible_until_the_commit_and_a_resend_is_stored_once(
        client: Any, dataset: str, write_client: Any) -> None:
    table = write_path(dataset, schemas.TICKS_TABLE)
    stream = PendingStream(write_client, table, RowEncoder(schemas.TICKS_TABLE).descriptor)
    items = encoded(schemas.TICKS_TABLE, [tick(i) for i in range(500)])
    assert stream.appender.append(items) == []
    # A lost answer: the same requests are sent again at the same offsets.
    stream.appender.next_offset = 0
    assert stream.appender.append(items) == []
    assert stream.appender.rows_stored == 1_000  # both counted as stored: the second is a no-op
    assert count(client, dataset, schemas.TICKS_TABLE) == (0, 0)
    assert stream.finalize() == 500
    assert count(client, dataset, schemas.TICKS_TABLE) == (0, 0)
    assert commit_streams(write_client, [(table, stream.name)]) == {table: 1}
    assert count(client, dataset, schemas.TICKS_TABLE) == (500, 500)


def test_a_refused_commit_commits_nothing_of_that_table(client: Any, dataset: str,
                                                        write_client: Any) -> None:
    table = write_path(dataset, schemas.TICKS_TABLE)
    descriptor = RowEncoder(schemas.TICKS_TABLE).descriptor
    finished, open_ = PendingStream(write_client, table, descriptor), PendingStream(write_client, table, descriptor)
    for stream in (finished, open_):
        assert stream.appender.append(encoded(schemas.TICKS_TABLE, [tick(stream.name[-6:])])) == []
    finished.finalize()
    with pytest.raises(storage_write.CommitError, match="INVALID_STREAM_STATE"):
        commit_streams(write_client, [(table, finished.name), (table, open_.name)])
    assert count(client, dataset, schemas.TICKS_TABLE) == (0, 0)


class FailingRowsFn(beam.DoFn):
    """Fails the run on its last input, after the writers of the other branch had rows."""

    def process(self, element: int) -> Iterator[int]:
        if element == 9:
            raise RuntimeError("the run breaks before its end")
        yield element


def bounded_run(dataset: str, fail: bool) -> Any:
    pipeline = beam.Pipeline(options=PipelineOptions(project=PROJECT))
    pending = PendingStreams()
    ticks = [[tick(i * 100 + j, T0_US + j) for j in range(100)] for i in range(10)] + [
        [tick("bad", price="NaN?")]]
    candles = [candle(T0_US + i * MINUTE_US) for i in range(30)]
    _ = (pipeline | "Ticks" >> beam.Create(ticks)
         | "WriteTicks" >> bq.WriteRowsToBigQuery(schemas.TICKS_TABLE, dataset, batched=True,
                                                  pending=pending))
    _ = (pipeline | "Candles" >> beam.Create(candles)
         | "WriteCandles" >> bq.WriteRowsToBigQuery(schemas.CANDLES_TABLE, dataset, pending=pending))
    if fail:
        _ = pipeline | "Numbers" >> beam.Create(range(10)) | beam.ParDo(FailingRowsFn())
    committed = pending.commit()
    assert_that(committed | beam.Map(lambda pair: pair[0].rsplit("/", 1)[1]),
                equal_to(["candles", "dead_letter", "ticks"]))
    return run(pipeline)


def test_a_bounded_run_writes_every_table_at_its_end_or_nothing(
        client: Any, dataset: str, beam_to_emulator: None) -> None:
    with pytest.raises(Exception, match="the run breaks before its end"):
        bounded_run(dataset, fail=True)
    for table in schemas.FIELDS:
        assert count(client, dataset, table) == (0, 0), table  # nothing half-written
    result = bounded_run(dataset, fail=False)  # the re-run
    assert count(client, dataset, schemas.TICKS_TABLE) == (1_000, 1_000)
    assert count(client, dataset, schemas.CANDLES_TABLE) == (30, 30)
    assert list(dead_letters_by_id(client, dataset)) == ["bad"]
    assert counter(result, "ticks_rows_appended") == 1_000


def test_pending_streams_need_the_storage_write_api() -> None:
    with pytest.raises(ValueError, match="Storage Write API feature"):
        bq.WriteRowsToBigQuery(schemas.TICKS_TABLE, "p:d", method=bq.STREAMING_INSERTS,
                               pending=PendingStreams())
    with pytest.raises(ValueError, match="unknown BigQuery write method 'FILE_LOADS'"):
        bq.WriteRowsToBigQuery(schemas.TICKS_TABLE, "p:d", method="FILE_LOADS")
    with pytest.raises(ValueError, match="no BigQuery writer"):
        PendingStreams().commit()


# ---------------------------------------------------------------------------------------------
# Transient failures
# ---------------------------------------------------------------------------------------------

def test_an_outage_is_retried_until_the_server_is_back_and_nothing_is_lost() -> None:
    """bqemulator stopped while rows are being appended, started again on the same ports with
    its data: the append waits, backs off, and lands every row."""
    with PersistentBigQueryEmulator(project=PROJECT) as server:
        rest = bq.make_client(PROJECT, server.endpoint)
        ref = f"{PROJECT}:outage"
        bq.ensure_tables(rest, ref)
        rest.close()
        appender = Appender(make_write_client(server.grpc_host),
                            storage_write.table_path(PROJECT, "outage", "ticks") + "/streams/_default",
                            RowEncoder(schemas.TICKS_TABLE).descriptor)
        server.go_down()
        outcome: dict[str, Any] = {}
        writer = threading.Thread(target=lambda: outcome.update(
            rejected=appender.append(encoded(schemas.TICKS_TABLE, [tick(i) for i in range(200)]))))
        writer.start()
        time.sleep(3)
        assert writer.is_alive()  # still trying, not failed
        server.come_back()
        writer.join(timeout=120)
        assert not writer.is_alive()
        assert outcome["rejected"] == [] and appender.retries >= 1
        rest = bq.make_client(PROJECT, server.endpoint)
        assert count(rest, ref, schemas.TICKS_TABLE) == (200, 200)
        rest.close()


class ScriptedWriteClient:
    """Answers each AppendRows connection with a scripted function of its requests: the
    answers bqemulator never gives."""

    def __init__(self, *script: Callable[[list[Any]], Iterator[Any]]) -> None:
        self._script = list(script)
        self.connections: list[list[Any]] = []

    def append_rows(self, requests: Iterator[Any], **_: Any) -> Iterator[Any]:
        sent = list(requests)
        self.connections.append(sent)
        return self._script.pop(0)(sent)


def ok(requests: list[Any]) -> Iterator[Any]:
    for _ in requests:
        yield types.AppendRowsResponse(append_result=types.AppendRowsResponse.AppendResult())


def rows_of(request: Any) -> list[str]:
    """The trade ids a request carries."""
    return [decode(RowEncoder(schemas.TICKS_TABLE), data)["id"]
            for data in request.proto_rows.rows.serialized_rows]


def scripted_appender(client: ScriptedWriteClient, offsets: bool = False) -> tuple[Appender, list[float]]:
    sleeps: list[float] = []
    return Appender(client, "projects/p/datasets/d/tables/ticks/streams/_default",
                    RowEncoder(schemas.TICKS_TABLE).descriptor, offsets=offsets,
                    sleep=sleeps.append), sleeps


def test_row_errors_reject_those_rows_and_send_the_others_again() -> None:
    def refuse_rows_1_and_3(requests: list[Any]) -> Iterator[Any]:
        yield types.AppendRowsResponse(
            error={"code": 3, "message": "Errors found while processing rows."},
            row_errors=[types.RowError(index=1, code=types.RowError.RowErrorCode.FIELDS_ERROR,
                                       message="Field price: bad value"),
                        types.RowError(index=3, code=types.RowError.RowErrorCode.FIELDS_ERROR,
                                       message="Field side: too long")])

    client = ScriptedWriteClient(refuse_rows_1_and_3, ok)
    appender, sleeps = scripted_appender(client)
    rejected = appender.append(encoded(schemas.TICKS_TABLE, [tick(i) for i in range(5)]))
    assert [(r.row["id"], r.reason) for r in rejected] == [
        ("1", "FIELDS_ERROR: Field price: bad value"), ("3", "FIELDS_ERROR: Field side: too long")]
    assert rejected[0].errors == [{"reason": "FIELDS_ERROR", "message": "Field price: bad value"}]
    assert rows_of(client.connections[1][0]) == ["0", "2", "4"]
    assert appender.rows_stored == 3 and sleeps == []
    # Every request names its stream and carries the writer schema (bqemulator needs both).
    assert all(r.write_stream == appender.stream and "writer_schema" in r.proto_rows
               for c in client.connections for r in c)


def test_transient_answers_and_broken_connections_are_sent_again_with_backoff() -> None:
    def unavailable(requests: list[Any]) -> Iterator[Any]:
        yield types.AppendRowsResponse(error={"code": 14, "message": "try later"})

    def connection_drops_after_one_answer(requests: list[Any]) -> Iterator[Any]:
        yield from ok(requests[:1])
        raise api_exceptions.ServiceUnavailable("connection reset")

    client = ScriptedWriteClient(unavailable, unavailable, connection_drops_after_one_answer, ok)
    appender, sleeps = scripted_appender(client)
    items = encoded(schemas.TICKS_TABLE, [tick(i, native_symbol="S" * 3_000_000) for i in range(6)])
    assert appender.append(items) == []
    assert [len(c) for c in client.connections] == [2, 2, 2, 1]  # 3 rows of 3 MB per request
    assert rows_of(client.connections[3][0]) == ["3", "4", "5"]
    assert sleeps == [0.5, 1.0, 2.0] and appender.retries == 3
    assert appender.rows_stored == 6


def test_with_offsets_a_failed_request_voids_the_ones_after_it() -> None:
    def second_of_two_fails(requests: list[Any]) -> Iterator[Any]:
        yield from ok(requests[:1])
        yield types.AppendRowsResponse(error={"code": 13, "message": "internal"})

    client = ScriptedWriteClient(second_of_two_fails, ok)
    appender, _ = scripted_appender(client, offsets=True)
    items = encoded(schemas.TICKS_TABLE, [tick(i, native_symbol="S" * 5_000_000) for i in range(2)])
    assert appender.append(items) == []
    assert [r.offset for r in client.connections[0]] == [0, 1]
    assert [r.offset for r in client.connections[1]] == [1]
    assert appender.next_offset == 2


def test_a_refusal_of_the_whole_call_rejects_every_row_with_the_reason() -> None:
    def denied(requests: list[Any]) -> Iterator[Any]:
        raise api_exceptions.PermissionDenied("no bigquery.tables.updateData")
        yield  # a generator, like a real response stream

    appender, sleeps = scripted_appender(ScriptedWriteClient(denied))
    rejected = appender.append(encoded(schemas.TICKS_TABLE, [tick(i) for i in range(3)]))
    assert [r.reason for r in rejected] == ["403 no bigquery.tables.updateData"] * 3
    assert sleeps == []


def test_timestamps_reach_bigquery_as_the_same_instants(client: Any, dataset: str,
                                                        write_client: Any) -> None:
    ts = [T0_US, T0_US + 1, -1, 0, parse_time_us("9999-12-31T23:59:59.999999Z")]
    appender = Appender(write_client, write_path(dataset, schemas.TICKS_TABLE) + "/streams/_default",
        RowEncoder(schemas.TICKS_TABLE).descriptor)
    rows = [tick(i, timestamp=iso_from_us(t)) for i, t in enumerate(ts)]
    assert appender.append(encoded(schemas.TICKS_TABLE, rows)) == []
    stored = query(client, f"SELECT id, UNIX_MICROS(timestamp) AS us FROM "
                           f"`{table_path(dataset, schemas.TICKS_TABLE)}` ORDER BY id")
    assert [r["us"] for r in stored] == ts


def test_unknown_is_retried_a_few_times_then_judged_row_by_row() -> None:
    def unknown(requests: list[Any]) -> Iterator[Any]:
        raise api_exceptions.Unknown("Unexpected ResourceInUseException")
        yield

    passing_glitch = ScriptedWriteClient(unknown, unknown, ok)
    appender, sleeps = scripted_appender(passing_glitch)
    assert appender.append(encoded(schemas.TICKS_TABLE, [tick(i) for i in range(2)])) == []
    assert sleeps == [0.5, 1.0]

    persistent = ScriptedWriteClient(*[unknown] * (storage_write.UNKNOWN_RETRIES + 3))
    appender, sleeps = scripted_appender(persistent)
    rejected = appender.append(encoded(schemas.TICKS_TABLE, [tick(i) for i in range(2)]))
    assert [(r.row["id"], r.reason) for r in rejected] == [
        ("0", "UNKNOWN Unexpected ResourceInUseException"),
        ("1", "UNKNOWN Unexpected ResourceInUseException")]
    assert len(sleeps) == storage_write.UNKNOWN_RETRIES


# ---------------------------------------------------------------------------------------------
# The pipeline with the default writer
# ---------------------------------------------------------------------------------------------

@pytest.mark.timeout(600)
def test_replay_into_bigquery_commits_once_per_run_and_the_views_show_the_day_once(
        client: Any, beam_to_emulator: None, sample_replay: dict[str, Any], tmp_path: Any) -> None:
    """`mds replay --output-dataset` (bounded: PENDING streams, one commit) of the real day, run
    twice: each run stores every row once, and the views hide the second run's copies."""
    from pipelines.replay import parse_args, replay

    ref = f"{PROJECT}:replay_{uuid.uuid4().hex[:8]}"
    for run_number in (1, 2):
        summary = replay(parse_args(["--output-dir", str(tmp_path / str(run_number)), "--mode",
                                     "both", "--start-time", "2017-08-17", "--end-time",
                                     "2017-08-18", "--quiet", "--output-dataset", ref]))
        assert summary["unique_ticks"] == 3_427
        assert count(client, ref, schemas.TICKS_TABLE) == (3_427 * run_number, 3_427)
        assert count(client, ref, schemas.CANDLES_TABLE)[0] == len(sample_replay["candles"]) * run_number
    ds = "`" + table_path(ref, "")
    assert query(client, f"SELECT COUNT(*) AS n FROM {ds}ticks_unique`")[0]["n"] == 3_427
    latest = {(r["timeframe"], r["timestamp_in"].timestamp()): r for r in query(
        client, f"SELECT * FROM {ds}candles_latest`")}
    expected = {}
    for row in sample_replay["candles"]:
        key = (row["timeframe"], parse_time_us(row["timestamp_in"]) / 1e6)
        if key not in expected or row["revision"] > expected[key]["revision"]:
            expected[key] = row
    assert latest.keys() == expected.keys()
    for key, row in expected.items():
        for column in ("open", "high", "low", "close", "volume", "trades", "revision", "sma_5"):
            assert latest[key][column] == (row[column] if row[column] is None or column in ("trades", "revision")
                                           else pytest.approx(row[column], rel=1e-12)), (key, column)
    # Each run is a job of its own (its job_start): both runs' revisions are kept, the newest wins.
    assert query(client, f"SELECT COUNT(*) AS n FROM {ds}candles_unique`")[0]["n"] == 2 * len(
        sample_replay["candles"])
