"""BigQuery output (SPEC §4, §6): tables and views as code, and the writer interface.

``WriteRowsToBigQuery`` writes with one of two methods. ``STORAGE_WRITE_API`` (the default) is
``transforms.storage_write_sink.AppendRowsFn``, a native Python Storage Write API writer (see
that module and docs/bigquery.md for why not Beam's cross-language sink). ``STREAMING_INSERTS``
is ``InsertRowsFn``, described here: it sends row batches to ``tabledata.insertAll`` (legacy
streaming inserts) with ``google-cloud-bigquery``'s ``insert_rows_json``; tables are made up
front by ``ensure_tables``. Not Beam's ``WriteToBigQuery(method=STREAMING_INSERTS)``, which this
project used first: its ``BigQueryWriteFn._check_row_size`` sizes every row with ``objsize.get_deep_size``,
which walks the globals of every loaded module on each call — 378 µs per tick row measured here
with Beam imported (2,188 modules), i.e. at most ~2,600 rows/s per core, on Dataflow workers as
much as locally — and it shuffles every row onto one of 500 random keys before writing. Here a
batch of ticks stays one element until the request, a row's size is its JSON length (~3 µs), and
the client needs no Beam credential plumbing, so the same code runs on Dataflow and against the
local BigQuery API server (``BIGQUERY_EMULATOR_HOST``).

Failures never vanish: rows the pre-insert check refuses, rows BigQuery rejects (``insertErrors``)
and whole requests it refuses (missing table, bad request) become ``dead_letter`` rows (stage
``bigquery_insert``, the server's reason, the row as JSON); a dead-letter row that cannot be
written either is counted and logged whole. Transient errors (connection refused or reset,
5xx, 429, quota) are retried with capped exponential backoff for as long as they last, so an
outage delays rows instead of dropping them; tick rows carry a deterministic ``insertId`` so
BigQuery's best-effort dedup also covers a retried request. FILE_LOADS is not offered: a load
job fails as a whole, so per-row dead-lettering would be lost.

Timestamps: every TIMESTAMP column carries an ISO-8601 UTC string with microseconds and ``Z``
(``ingest.message.iso_from_us``: ``2017-08-17T04:00:28.123456Z``). Real BigQuery reads numbers
as epoch SECONDS, bqemulator 1.4 reads them as MICROseconds (measured: 1502942428.1 became
1970-01-01T00:25:02), so numbers are not portable; ISO strings mean the same instant on both,
in streaming inserts and in JSON load files, and read well in the JSONL sinks.

Before the insert, rows are checked for what BigQuery would judge differently locally or what
JSON cannot carry: REQUIRED columns present (bqemulator stores NULL silently), no unknown
columns (bqemulator drops them silently), TIMESTAMPs as ISO strings, finite floats (NaN is not
JSON), and a size under the request limit. Failing rows go to ``dead_letter`` too. Types are
left to BigQuery, which rejects them on both backends. Both writers apply this same check.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindows

from ingest.message import iso_from_us, parse_time_us
from transforms import schemas
from transforms.dead_letter import dead_letter
from transforms.sinks import finalize_row

if TYPE_CHECKING:
    from transforms.storage_write_sink import PendingStreams

_LOGGER = logging.getLogger(__name__)

STAGE_BIGQUERY_INSERT = "bigquery_insert"
FAILED = "failed"
STORAGE_WRITE_API = "STORAGE_WRITE_API"
STREAMING_INSERTS = "STREAMING_INSERTS"
WRITE_METHODS = (STORAGE_WRITE_API, STREAMING_INSERTS)

# insertAll limits (https://cloud.google.com/bigquery/quotas#streaming_inserts): 10 MB per
# request, 50,000 rows, 500 recommended. The byte cap leaves room for the request envelope.
MAX_ROWS_PER_REQUEST = 500
MAX_REQUEST_BYTES = 9 << 20
REQUEST_TIMEOUT_SECONDS = 60.0
RETRY_INITIAL_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
# Per-row insertErrors reasons that mean "send it again" (the row itself was not judged).
RETRYABLE_ROW_REASONS = frozenset({"stopped", "backendError", "internalError", "rateLimitExceeded",
                                   "timeout"})

# Legacy streaming inserts: $0.01 per 200 MB (MB = 2^20 bytes), each row billed as >= 1 KB
# (https://cloud.google.com/bigquery/pricing, "Streaming Inserts").
STREAMING_INSERT_USD_PER_200_MIB = 0.01
STREAMING_INSERT_MIN_ROW_BYTES = 1024

# Storage Write API: $0.025 per GiB ingested, the first 2 TiB per month free
# (https://cloud.google.com/bigquery/pricing, "Data ingestion pricing"; docs/cost-model.md).
STORAGE_WRITE_USD_PER_GIB = 0.025

# In creation order: a view is created after the views it reads.
VIEW_NAMES = ("ticks_unique", "candles_unique", "candles_latest", "candles_current",
              "latency_by_minute", "volume_by_hour", "rows_cost_by_day", "completeness_by_day")
# A copy of a row (a retried append or bundle) has the same key; the first copy written is kept.
# A restarted job's candles carry its own job_start: other rows, which candles_latest prefers.
# The partitioning column is part of each key, so a query's filter on it can be applied before
# the window function and prune partitions through the view.
UNIQUE_KEYS = {schemas.TICKS_TABLE: ("exchange", "symbol", "id", "timestamp"),
               schemas.CANDLES_TABLE: ("exchange", "symbol", "timeframe", "timestamp_in",
                                       "job_start", "revision")}


# ---------------------------------------------------------------------------------------------
# Clients, tables, views
# ---------------------------------------------------------------------------------------------

def make_client(project: str, endpoint: str | None = None) -> Any:
    """A google-cloud-bigquery Client; with ``endpoint`` (the local emulator) it is anonymous."""
    from google.cloud import bigquery

    if endpoint is None:
        return bigquery.Client(project=project)
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    return bigquery.Client(project=project, credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=endpoint))


def split_dataset_ref(dataset_ref: str) -> tuple[str, str]:
    """``PROJECT:DATASET`` or ``PROJECT.DATASET`` -> (project, dataset)."""
    project, sep, dataset = dataset_ref.replace(":", ".").partition(".")
    if not sep or not project or not dataset or "." in dataset:
        raise ValueError(f"expected PROJECT:DATASET or PROJECT.DATASET, got {dataset_ref!r}")
    return project, dataset


def ensure_tables(client: Any, dataset_ref: str) -> list[str]:
    """Create the dataset and the ticks/candles/dead_letter tables if missing.

    Returns the tables created by this call (empty when everything existed: a no-op).
    """
    from google.cloud import bigquery

    project, dataset = split_dataset_ref(dataset_ref)
    client.create_dataset(bigquery.Dataset(f"{project}.{dataset}"), exists_ok=True)
    existing = {t.table_id for t in client.list_tables(f"{project}.{dataset}")}
    created = []
    for name, fields in schemas.FIELDS.items():
        if name in existing:
            continue
        table = bigquery.Table(f"{project}.{dataset}.{name}",
                               schema=[bigquery.SchemaField.from_api_repr(f) for f in fields])
        partitioning = schemas.TIME_PARTITIONING[name]
        table.time_partitioning = bigquery.TimePartitioning(type_=partitioning["type"],
                                                            field=partitioning["field"])
        table.clustering_fields = schemas.CLUSTERING[name]
        client.create_table(table, exists_ok=True)
        created.append(name)
    return created


def _row_bytes_sql(table: str) -> str:
    """SQL for one row's size by BigQuery's data size rules (numbers 8, BOOL 1, STRING 2+len,
    NULL 0)."""
    sizes = {"FLOAT64": 8, "INT64": 8, "TIMESTAMP": 8, "BOOL": 1}
    terms = []
    for field in schemas.FIELDS[table]:
        name = f"`{field['name']}`"
        if field["type"] == "STRING":
            terms.append(f"IFNULL(2 + BYTE_LENGTH({name}), 0)")
        else:
            terms.append(f"IF({name} IS NULL, 0, {sizes[field['type']]})")
    return " + ".join(terms)


def view_sql(project: str, dataset: str) -> dict[str, str]:
    """The SPEC §6 views as Standard SQL SELECTs (name -> query); valid on BigQuery and
    bqemulator."""
    ds = f"`{project}.{dataset}"
    candles, ticks, dead_letter = f"{ds}.candles`", f"{ds}.ticks`", f"{ds}.dead_letter`"
    cost_parts = []
    for table, source in ((schemas.TICKS_TABLE, ticks), (schemas.CANDLES_TABLE, candles),
                          (schemas.DEAD_LETTER_TABLE, dead_letter)):
        partition_field = schemas.TIME_PARTITIONING[table]["field"]
        cost_parts.append(
            f"SELECT '{table}' AS table_name, DATE(COALESCE(timestamp_out, {partition_field})) AS day,"
            f" {_row_bytes_sql(table)} AS row_bytes FROM {source}")
    unique = {table: f"""
SELECT * EXCEPT (copy_rank) FROM (
  SELECT r.*, ROW_NUMBER() OVER (
    PARTITION BY {', '.join(UNIQUE_KEYS[table])} ORDER BY timestamp_out) AS copy_rank
  FROM {source} AS r)
WHERE copy_rank = 1""" for table, source in ((schemas.TICKS_TABLE, ticks), (schemas.CANDLES_TABLE, candles))}
    return {
        # Each tick once, however many times it was written.
        "ticks_unique": unique[schemas.TICKS_TABLE],
        # Each revision of each job's candle once.
        "candles_unique": unique[schemas.CANDLES_TABLE],
        # One row per candle: the newest job's highest revision (corrections of late ticks, and
        # a restarted job's replay, supersede).
        "candles_latest": f"""
SELECT * EXCEPT (revision_rank) FROM (
  SELECT c.*, ROW_NUMBER() OVER (
    PARTITION BY exchange, symbol, timeframe, timestamp_in
    ORDER BY job_start DESC, revision DESC) AS revision_rank
  FROM {ds}.candles_unique` AS c)
WHERE revision_rank = 1""",
        # The newest candle of every exchange/symbol/timeframe (a live board).
        "candles_current": f"""
SELECT * EXCEPT (recency_rank) FROM (
  SELECT l.*, ROW_NUMBER() OVER (
    PARTITION BY exchange, symbol, timeframe ORDER BY timestamp_in DESC) AS recency_rank
  FROM {ds}.candles_latest` AS l)
WHERE recency_rank = 1""",
        # End-to-end latency per minute of output time, for ticks and for candles. Quantiles are
        # picked by UNNEST ... WITH OFFSET, not quantiles[OFFSET(n)]: bqemulator 1.4 indexes an
        # aggregated array off by one (measured: OFFSET(50) of 0..100 gave 49 or 51).
        "latency_by_minute": f"""
SELECT minute, source, row_count,
  MAX(IF(position = 50, quantile, NULL)) AS p50_ms,
  MAX(IF(position = 95, quantile, NULL)) AS p95_ms,
  MAX(IF(position = 99, quantile, NULL)) AS p99_ms,
  max_ms
FROM (
  SELECT minute, source, COUNT(*) AS row_count,
    APPROX_QUANTILES(latency_ms, 100) AS quantiles, MAX(latency_ms) AS max_ms
  FROM (
    SELECT TIMESTAMP_TRUNC(timestamp_out, MINUTE) AS minute, 'ticks' AS source, latency_ms
    FROM {ds}.ticks_unique` WHERE latency_ms IS NOT NULL
    UNION ALL
    SELECT TIMESTAMP_TRUNC(timestamp_out, MINUTE) AS minute, 'candles' AS source, latency_ms
    FROM {ds}.candles_unique` WHERE latency_ms IS NOT NULL)
  GROUP BY minute, source),
  UNNEST(quantiles) AS quantile WITH OFFSET AS position
WHERE position IN (50, 95, 99)
GROUP BY minute, source, row_count, max_ms""",
        # Hourly volume from the latest revision of the 1m candles (present in every default
        # run; ticks are only stored in ticks/both mode).
        "volume_by_hour": f"""
SELECT TIMESTAMP_TRUNC(timestamp_in, HOUR) AS hour, exchange, symbol,
  SUM(volume) AS volume, SUM(quote_volume) AS quote_volume,
  SAFE_DIVIDE(SUM(quote_volume), SUM(volume)) AS vwap,
  SUM(trades) AS trades, SUM(buy_volume) AS buy_volume, SUM(sell_volume) AS sell_volume,
  COUNT(*) AS candle_count
FROM {ds}.candles_latest`
WHERE timeframe = '1m'
GROUP BY hour, exchange, symbol""",
        # How complete the candles of each day are, from their latest revision (SPEC §3.3). A
        # missing range touching two candles counts in both, so the column is the worst candle's
        # count, not a total; NULL where the venue cannot tell.
        "completeness_by_day": f"""
SELECT DATE(timestamp_in) AS day, exchange, symbol, timeframe, COUNT(*) AS candle_count,
  COUNTIF(is_complete) AS complete_candles, COUNTIF(missing_trades > 0) AS candles_missing_trades,
  MAX(missing_trades) AS max_missing_trades, COUNTIF(is_partial) AS partial_candles
FROM {ds}.candles_latest`
WHERE is_final
GROUP BY day, exchange, symbol, timeframe""",
        # Rows, approximate bytes and the cost of writing them with either method, per day (of
        # insert) and table, before free tiers. Every copy written counts: each was billed.
        "rows_cost_by_day": f"""
SELECT day, table_name, COUNT(*) AS row_count, SUM(row_bytes) AS approx_bytes,
  SUM(GREATEST(row_bytes, {STREAMING_INSERT_MIN_ROW_BYTES})) AS billed_bytes,
  SUM(GREATEST(row_bytes, {STREAMING_INSERT_MIN_ROW_BYTES})) / (200 * 1024 * 1024)
    * {STREAMING_INSERT_USD_PER_200_MIB} AS streaming_insert_usd,
  SUM(row_bytes) / (1024 * 1024 * 1024) * {STORAGE_WRITE_USD_PER_GIB} AS storage_write_api_usd
FROM (
  {'''
  UNION ALL
  '''.join(cost_parts)})
GROUP BY day, table_name""",
    }


def ensure_views(client: Any, dataset_ref: str) -> list[str]:
    """Create or replace every SPEC §6 view (idempotent); returns their names in creation
    order."""
    project, dataset = split_dataset_ref(dataset_ref)
    queries = view_sql(project, dataset)
    for name in VIEW_NAMES:
        statement = f"CREATE OR REPLACE VIEW `{project}.{dataset}.{name}` AS {queries[name]}"
        client.query(statement).result()
    return list(VIEW_NAMES)


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------

_FIELDS_BY_NAME = {table: {f["name"]: f for f in fields} for table, fields in schemas.FIELDS.items()}


def row_problem(row: Mapping[str, Any], table: str) -> str | None:
    """Why BigQuery must not get this row (see module docstring), or None when it may."""
    fields = _FIELDS_BY_NAME[table]
    unknown = sorted(set(row) - set(fields))
    if unknown:
        return f"unknown columns for table {table}: {', '.join(unknown)}"
    for name, field in fields.items():
        value = row.get(name)
        if value is None:
            if field["mode"] == "REQUIRED":
                return f"REQUIRED column {name!r} is missing or NULL"
            continue
        if field["type"] == "TIMESTAMP":
            if not isinstance(value, str) or value.strip().lstrip("-").isdigit():
                return f"TIMESTAMP column {name!r} must be an ISO-8601 string, got {value!r}"
            try:
                parse_time_us(value)
            except ValueError as exc:
                return f"TIMESTAMP column {name!r}: {exc}"
        elif isinstance(value, float) and not math.isfinite(value):
            return f"column {name!r} is not finite: {value!r}"
    return None


def dead_letter_row(stage: str, reason: str, payload: Any, attributes: Mapping[str, Any] | None = None,
                    event_time: str | None = None) -> dict[str, Any]:
    """A finished ``dead_letter`` table row (``timestamp_out`` stamped, times as ISO strings)."""
    row = dead_letter(stage, reason, payload, attributes)
    row["event_time"] = event_time
    return finalize_row(row, schemas.DEAD_LETTER_TABLE)


def _event_time_of(row: Mapping[str, Any], table: str) -> str | None:
    """The row's partitioning time when it is a valid ISO string, so dead letters can be dated."""
    value = row.get(schemas.TIME_PARTITIONING[table]["field"])
    try:
        return iso_from_us(parse_time_us(value)) if isinstance(value, str) else None
    except ValueError:
        return None


class LogUnwritableDeadLetterFn(beam.DoFn):
    """Last resort for dead-letter rows BigQuery refused too: count them and log them whole."""

    def __init__(self) -> None:
        self._lost = Metrics.counter("bigquery", "dead_letter_rows_unwritable")

    def process(self, dead_letter: Mapping[str, Any]) -> Iterator[None]:
        self._lost.inc()
        _LOGGER.error("dead_letter row could not be written to BigQuery: %s",
                      json.dumps(dead_letter, sort_keys=True, default=str))
        return iter(())


def _retryable_row_error(errors: Iterable[Mapping[str, Any]]) -> bool:
    """An insertErrors entry BigQuery asks to resend: the row was not judged, only not stored."""
    return all(e.get("reason") in RETRYABLE_ROW_REASONS for e in errors)


def _log_retry(exc: Exception) -> None:
    _LOGGER.warning("BigQuery insert failed, retrying with backoff: %s", exc)


class InsertRowsFn(beam.DoFn):
    """Rows (or lists of rows, ``batched``) → ``insertAll`` requests on one table; rows that
    cannot be stored → ``FAILED`` as dead-letter rows (in the global window).

    Each row is finished (``finalize_row``: ``timestamp_out``/``latency_ms`` stamped), checked and
    buffered; a request goes out when the buffer reaches BigQuery's row or byte limit and at the
    end of every bundle, synchronously, so a bundle commits only after its rows are stored
    (at-least-once) and a row waits at most one bundle.
    """

    def __init__(self, project: str, dataset: str, table: str, batched: bool = False,
                 with_latency: bool = True) -> None:
        self._project = project
        self._dataset = dataset
        self._table = table
        self._batched = batched
        self._with_latency = with_latency  # False for a bounded run's historical rows
        self._inserted = Metrics.counter("bigquery", f"{table}_rows_inserted")
        self._rejected = Metrics.counter("bigquery", f"{table}_rows_rejected")
        self._failed = Metrics.counter("bigquery", f"{table}_insert_failed")
        self._retried = Metrics.counter("bigquery", f"{table}_insert_retries")
        self._client: Any = None
        self._retry: Any = None
        self._buffer: list[dict[str, Any]] = []
        self._buffer_bytes = 0

    def setup(self) -> None:
        from google.api_core.retry import Retry
        from google.cloud.bigquery import DEFAULT_RETRY

        # BIGQUERY_EMULATOR_HOST is set only for local runs (pipelines.streaming_pipeline).
        self._client = make_client(self._project, os.environ.get("BIGQUERY_EMULATOR_HOST"))
        # The client's own notion of transient (5xx, 429, connection errors, retryable reasons),
        # without its 10-minute deadline, and logged: an outage delays rows, never drops them.
        self._retry = Retry(predicate=DEFAULT_RETRY._predicate, initial=RETRY_INITIAL_SECONDS,
                            maximum=RETRY_MAX_SECONDS, timeout=None, on_error=_log_retry)

    def teardown(self) -> None:
        if self._client is not None:
            self._client.close()

    def start_bundle(self) -> None:
        self._buffer, self._buffer_bytes = [], 0

    def process(self, element: Any) -> Iterator[TaggedOutput]:
        now_us = time.time_ns() // 1_000
        for row in element if self._batched else (element,):
            finished = finalize_row(row, self._table, now_us, self._with_latency)
            problem = row_problem(finished, self._table)
            size = len(json.dumps(finished, separators=(",", ":"))) if problem is None else 0
            if problem is None and size > MAX_REQUEST_BYTES:
                problem = f"row of {size:,} bytes exceeds the {MAX_REQUEST_BYTES:,}-byte insertAll request limit"
            if problem is not None:
                self._rejected.inc()
                yield failed_row(self._table, problem, finished)
                continue
            if self._buffer and (len(self._buffer) >= MAX_ROWS_PER_REQUEST
                                 or self._buffer_bytes + size > MAX_REQUEST_BYTES):
                yield from self._flush()
            self._buffer.append(finished)
            self._buffer_bytes += size

    def finish_bundle(self) -> Iterator[TaggedOutput]:
        yield from self._flush()

    def _flush(self) -> Iterator[TaggedOutput]:
        rows, self._buffer, self._buffer_bytes = self._buffer, [], 0
        if rows:
            yield from self._insert(rows)

    def _insert(self, rows: list[dict[str, Any]]) -> Iterator[TaggedOutput]:
        """One request, then again for the rows BigQuery asks to resend, until none is left."""
        from google.api_core.exceptions import GoogleAPICallError
        from google.cloud.bigquery import AutoRowIDs

        table_ref = f"{self._project}.{self._dataset}.{self._table}"
        id_columns = schemas.INSERT_ID_COLUMNS.get(self._table)
        pending = rows
        for attempt in itertools.count():
            row_ids = (["|".join(str(r[c]) for c in id_columns) for r in pending]
                       if id_columns else AutoRowIDs.GENERATE_UUID)
            try:
                errors = self._client.insert_rows_json(
                    table_ref, pending, row_ids=row_ids, skip_invalid_rows=True,
                    retry=self._retry, timeout=REQUEST_TIMEOUT_SECONDS)
            except GoogleAPICallError as exc:  # not transient: missing table, bad request, denied
                self._failed.inc(len(pending))
                for row in pending:
                    yield failed_row(self._table, f"{exc.code} {exc.message}", row)
                return
            resend = []
            for error in errors:
                row, row_errors = pending[error["index"]], error.get("errors") or []
                if row_errors and _retryable_row_error(row_errors):
                    resend.append(row)
                    continue
                self._failed.inc()
                reason = "; ".join(f"{e.get('reason', 'error')}: {e.get('message', '')}".strip()
                                   for e in row_errors) or "insert failed without an error message"
                yield failed_row(self._table, reason, row, row_errors)
            self._inserted.inc(len(pending) - len(errors))
            if not resend:
                return
            self._retried.inc()
            time.sleep(min(RETRY_MAX_SECONDS, RETRY_INITIAL_SECONDS * 2 ** attempt))
            pending = resend



def failed_row(table: str, reason: str, row: Mapping[str, Any],
               errors: Iterable[Mapping[str, Any]] = ()) -> TaggedOutput:
    """A row a writer could not store → its ``dead_letter`` row on ``FAILED``, global window."""
    attributes: dict[str, Any] = {"table": table}
    if errors:
        attributes["errors"] = list(errors)
    return TaggedOutput(FAILED, GlobalWindows.windowed_value(dead_letter_row(
        STAGE_BIGQUERY_INSERT, reason, row, attributes, _event_time_of(row, table))))


class WriteRowsToBigQuery(beam.PTransform):
    """Writes rows (columns of ``transforms.schemas``, times as µs or ISO strings) into one table
    of a dataset; returns the rows that could not be stored, as ``dead_letter`` rows, which are
    also written to the dataset's ``dead_letter`` table. When the target is the ``dead_letter``
    table itself, its failures are counted and logged instead (no loop).

    ``batched=True`` takes lists of rows (e.g. one per tick batch), so a batch stays one
    element up to the writer; ``with_latency=False`` leaves ``latency_ms`` NULL (a bounded run's
    historical rows). ``method``: ``STORAGE_WRITE_API`` (``AppendRowsFn``, the default)
    or ``STREAMING_INSERTS`` (``InsertRowsFn``). ``pending`` (Storage Write API, bounded runs):
    write to PENDING streams that ``pending.commit()`` makes visible at the end of the run.
    """

    def __init__(self, table: str, dataset: str, batched: bool = False,
                 with_latency: bool = True, method: str = STORAGE_WRITE_API,
                 pending: "PendingStreams | None" = None) -> None:
        super().__init__()
        if table not in schemas.FIELDS:
            raise ValueError(f"unknown table {table!r}; expected one of {sorted(schemas.FIELDS)}")
        if method not in WRITE_METHODS:
            raise ValueError(f"unknown BigQuery write method {method!r}; expected one of {WRITE_METHODS}")
        if pending is not None and method != STORAGE_WRITE_API:
            raise ValueError("PENDING streams are a Storage Write API feature")
        self._table = table
        self._project, self._dataset = split_dataset_ref(dataset)
        self._batched = batched
        self._with_latency = with_latency
        self._method = method
        self._pending = pending

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        if self._method == STREAMING_INSERTS:
            written = rows | "InsertAll" >> beam.ParDo(
                InsertRowsFn(self._project, self._dataset, self._table, self._batched,
                             self._with_latency)
            ).with_outputs(FAILED, main="stored")
        else:
            from transforms.storage_write_sink import STREAMS, AppendRowsFn

            written = rows | "AppendRows" >> beam.ParDo(AppendRowsFn(
                self._project, self._dataset, self._table, self._batched,
                self._pending is not None, self._with_latency)
            ).with_outputs(FAILED, STREAMS, main="stored")
            if self._pending is not None:
                self._pending.add(written[STREAMS])
        dead_letters = written[FAILED]
        if self._table == schemas.DEAD_LETTER_TABLE:
            _ = dead_letters | "LogUnwritable" >> beam.ParDo(LogUnwritableDeadLetterFn())
        else:
            _ = dead_letters | "WriteDeadLetter" >> WriteRowsToBigQuery(
                schemas.DEAD_LETTER_TABLE, f"{self._project}:{self._dataset}",
                method=self._method, pending=self._pending)
        return dead_letters
