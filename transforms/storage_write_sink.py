"""The Storage Write API writer as Beam steps: ``AppendRowsFn`` and the run-wide commit.

Streaming jobs append to each table's ``_default`` stream: rows are visible at once, delivery is
at-least-once (a request resent after a lost answer may be stored twice; the ``*_unique``
views of ``transforms.bigquery`` give each tick and candle revision once).

Bounded runs write exactly once per run: every bundle appends to its own PENDING stream, with
offsets, finalizes it when the bundle ends and emits its name. ``PendingStreams`` gathers those
names from every writer of the run and commits them after the last writer has finished, in one
``BatchCommitWriteStreams`` per table. A bundle that fails and is retried leaves its stream
uncommitted (BigQuery drops it), so nothing is stored twice; a run that fails before the commit
stores nothing, so running it again never half-writes.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PCollection, TaggedOutput
from apache_beam.transforms.window import GlobalWindows

from transforms.bigquery import failed_row, row_problem
from transforms.proto_rows import RowEncoder, RowEncodingError
from transforms.sinks import finalize_row
from transforms.storage_write import (MAX_REQUEST_BYTES, ROW_FRAMING_BYTES, Appender,
                                      PendingStream, Rejected, commit_streams, make_write_client,
                                      storage_emulator_host, table_path)

_LOGGER = logging.getLogger(__name__)

STREAMS = "pending_streams"
# A bundle's rows are sent when it ends, or earlier once this much is buffered.
FLUSH_ROWS = 50_000
FLUSH_BYTES = 4 * MAX_REQUEST_BYTES


class AppendRowsFn(beam.DoFn):
    """Rows (or lists of rows, ``batched``) → AppendRows on one table; rows that cannot be stored
    → ``FAILED`` as dead-letter rows (in the global window), exactly as ``InsertRowsFn``.

    Each row is finished (``finalize_row``), checked (``row_problem``) and encoded as a protobuf
    row; a row that fails either, or is larger than a request may be, is dead-lettered without
    being sent. With ``pending`` the bundle's PENDING stream goes out on ``STREAMS`` as
    (table path, stream name) once finalized.
    """

    def __init__(self, project: str, dataset: str, table: str, batched: bool = False,
                 pending: bool = False, with_latency: bool = True) -> None:
        self._table = table
        self._table_path = table_path(project, dataset, table)
        self._batched = batched
        self._pending = pending
        self._with_latency = with_latency  # False for a bounded run's historical rows
        self._appended = Metrics.counter("bigquery", f"{table}_rows_appended")
        self._bytes = Metrics.counter("bigquery", f"{table}_append_bytes")
        self._rejected = Metrics.counter("bigquery", f"{table}_rows_rejected")
        self._failed = Metrics.counter("bigquery", f"{table}_append_failed")
        self._retried = Metrics.counter("bigquery", f"{table}_append_retries")
        self._client: Any = None
        self._encoder: RowEncoder | None = None
        self._default: Appender | None = None
        self._stream: PendingStream | None = None
        self._buffer: list[tuple[dict[str, Any], bytes]] = []
        self._buffer_bytes = 0

    def setup(self) -> None:
        self._client = make_write_client(storage_emulator_host())
        self._encoder = RowEncoder(self._table)
        self._default = Appender(self._client, f"{self._table_path}/streams/_default",
                                 self._encoder.descriptor)

    def teardown(self) -> None:
        if self._client is not None:
            self._client.transport.close()

    def start_bundle(self) -> None:
        self._buffer, self._buffer_bytes, self._stream = [], 0, None

    def process(self, element: Any) -> Iterator[TaggedOutput]:
        now_us = time.time_ns() // 1_000
        for row in element if self._batched else (element,):
            finished = finalize_row(row, self._table, now_us, self._with_latency)
            problem = row_problem(finished, self._table)
            data = b""
            if problem is None:
                try:
                    data = self._encoder.encode(finished)
                except RowEncodingError as exc:
                    problem = str(exc)
            if problem is None and len(data) + ROW_FRAMING_BYTES > MAX_REQUEST_BYTES:
                problem = (f"row of {len(data):,} bytes exceeds the {MAX_REQUEST_BYTES:,}-byte "
                           f"AppendRows request limit")
            if problem is not None:
                self._rejected.inc()
                yield failed_row(self._table, problem, finished)
                continue
            self._buffer.append((finished, data))
            self._buffer_bytes += len(data)
            if len(self._buffer) >= FLUSH_ROWS or self._buffer_bytes >= FLUSH_BYTES:
                yield from self._flush()

    def finish_bundle(self) -> Iterator[TaggedOutput]:
        yield from self._flush()
        if self._stream is not None:
            rows = self._stream.finalize()
            _LOGGER.info("finalized PENDING stream %s with %d rows", self._stream.name, rows)
            yield TaggedOutput(STREAMS, GlobalWindows.windowed_value(
                (self._stream.table, self._stream.name)))
            self._stream = None

    def _flush(self) -> Iterator[TaggedOutput]:
        from google.api_core.exceptions import GoogleAPICallError

        items, self._buffer, self._buffer_bytes = self._buffer, [], 0
        if not items:
            return
        try:
            appender = self._appender()
        except GoogleAPICallError as exc:  # not transient: missing table, permission denied
            rejected = [Rejected(row, f"{exc.code} {exc.message}") for row, _ in items]
        else:
            before = (appender.rows_stored, appender.bytes_stored, appender.retries)
            rejected = appender.append(items)
            self._appended.inc(appender.rows_stored - before[0])
            self._bytes.inc(appender.bytes_stored - before[1])
            self._retried.inc(appender.retries - before[2])
        for rejection in rejected:
            self._failed.inc()
            yield failed_row(self._table, rejection.reason, rejection.row, rejection.errors)

    def _appender(self) -> Appender:
        if not self._pending:
            return self._default
        if self._stream is None:
            self._stream = PendingStream(self._client, self._table_path, self._encoder.descriptor)
        return self._stream.appender


class CommitPendingStreamsFn(beam.DoFn):
    """All (table path, stream name) pairs of a run → committed; yields (table path, streams)."""

    def process(self, streams: list[tuple[str, str]]) -> Iterator[tuple[str, int]]:
        committed = commit_streams(make_write_client(storage_emulator_host()), streams)
        for table, count in sorted(committed.items()):
            _LOGGER.info("committed %d PENDING streams of %s", count, table)
            yield table, count


class CommitPendingStreams(beam.PTransform):
    """PCollections of (table path, stream name) → one commit once all of them are complete."""

    def expand(self, streams: tuple[PCollection, ...]) -> PCollection:
        return (streams
                | "AllStreams" >> beam.Flatten()
                | "Gather" >> beam.combiners.ToList()
                | "Commit" >> beam.ParDo(CommitPendingStreamsFn()))


class PendingStreams:
    """The PENDING streams of one bounded run, committed together.

    Pass one instance to every ``WriteRowsToBigQuery`` of the run (each writer's dead-letter
    writer joins it too), then call ``commit`` once, after the last writer: a backfill of many
    files and workers is one run, one commit per table.
    """

    def __init__(self) -> None:
        self._streams: list[PCollection] = []

    def add(self, streams: PCollection) -> None:
        self._streams.append(streams)

    def commit(self, label: str = "CommitBigQueryStreams") -> PCollection:
        """Adds the commit step; returns (table path, streams committed) pairs."""
        if not self._streams:
            raise ValueError("no BigQuery writer of this run uses these PendingStreams")
        return tuple(self._streams) | label >> CommitPendingStreams()
