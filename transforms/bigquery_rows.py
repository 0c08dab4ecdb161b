"""The rows both BigQuery writers refuse before a write, and the ``dead_letter`` rows of what they
could not store.

Refused before the write: what BigQuery would judge differently locally, or what JSON cannot
carry: REQUIRED columns present (bqemulator stores NULL silently), no unknown columns
(bqemulator drops them silently), TIMESTAMPs as ISO-8601 strings (numbers mean epoch seconds on
BigQuery and microseconds on bqemulator: docs/bigquery.md), finite floats. Types are left to
BigQuery, which rejects them on both backends.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any, Iterable, Iterator, Mapping

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindows

from ingest.message import iso_from_us, parse_time_us
from transforms import schemas
from transforms.dead_letter import dead_letter
from transforms.sinks import finalize_row

_LOGGER = logging.getLogger(__name__)

STAGE_BIGQUERY_INSERT = "bigquery_insert"
FAILED = "failed"  # the writers' output tag of dead-letter rows


_FIELDS_BY_NAME = {table: {f["name"]: f for f in fields} for table, fields in schemas.FIELDS.items()}


def row_problem(row: Mapping[str, Any], table: str) -> str | None:
    """Why BigQuery must not get this row (see the module docstring), or None when it may."""
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


def failed_row(table: str, reason: str, row: Mapping[str, Any],
               errors: Iterable[Mapping[str, Any]] = ()) -> TaggedOutput:
    """A row a writer could not store → its ``dead_letter`` row on ``FAILED``, global window."""
    attributes: dict[str, Any] = {"table": table}
    if errors:
        attributes["errors"] = list(errors)
    return TaggedOutput(FAILED, GlobalWindows.windowed_value(dead_letter_row(
        STAGE_BIGQUERY_INSERT, reason, row, attributes, _event_time_of(row, table))))
