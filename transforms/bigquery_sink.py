"""``WriteRowsToBigQuery``: the one writer interface of the pipeline, with two methods.
``STORAGE_WRITE_API`` (the default) is ``transforms.storage_write_sink.AppendRowsFn``, a native
Python Storage Write API writer (docs/bigquery.md says why not Beam's cross-language sink);
``STREAMING_INSERTS`` is ``transforms.insert_all.InsertRowsFn``. Tables are made up front
(``transforms.bigquery.ensure_tables``). FILE_LOADS is not offered: a load job fails as a whole,
so per-row dead-lettering would be lost.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import apache_beam as beam

from transforms import schemas
from transforms.bigquery import split_dataset_ref
from transforms.bigquery_rows import FAILED, LogUnwritableDeadLetterFn
from transforms.insert_all import InsertRowsFn

if TYPE_CHECKING:
    from transforms.storage_write_sink import PendingStreams

STORAGE_WRITE_API = "STORAGE_WRITE_API"
STREAMING_INSERTS = "STREAMING_INSERTS"
WRITE_METHODS = (STORAGE_WRITE_API, STREAMING_INSERTS)


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
