"""``STREAMING_INSERTS``: legacy ``tabledata.insertAll`` through ``google-cloud-bigquery``'s
``insert_rows_json``, not Beam's ``WriteToBigQuery(method=STREAMING_INSERTS)``, whose per-row
sizing walks every loaded module (docs/bigquery.md). A batch of ticks stays one element up to
the request, and the same code runs on Dataflow and against the local BigQuery server.

Failures never vanish: refused rows, rows BigQuery rejects (``insertErrors``) and requests it
refuses become ``dead_letter`` rows; transient errors are retried with capped backoff for as
long as they last, so an outage delays rows instead of dropping them; tick rows carry a
deterministic ``insertId`` for BigQuery's best-effort dedup of a retried request.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import time
from typing import Any, Iterable, Iterator, Mapping

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from transforms import schemas
from transforms.bigquery import make_client
from transforms.bigquery_rows import failed_row, row_problem
from transforms.sinks import finalize_row

_LOGGER = logging.getLogger(__name__)

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
