"""Bytes per row as each BigQuery write method is billed, measured on the rows a run stored.

* ``logical``: BigQuery's data-size rules (numbers 8 B, BOOL 1, STRING 2 + UTF-8 length), over
  every stored row, from the ``rows_cost_by_day`` view.
* ``insertall_billed``: legacy streaming inserts bill each row as at least 1 KB of that size.
* ``proto``: the serialized protobuf row the Storage Write API writer sends (its request
  payload), re-encoded from a sample of the stored rows with the writer's own encoder.

Prices: ``transforms.bigquery`` (insertAll $0.01 per 200 MiB; Storage Write API $0.025 per GiB),
before free tiers; see docs/cost-model.md.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from ingest.message import iso_from_us
from transforms.bigquery import (STORAGE_WRITE_USD_PER_GIB, STREAMING_INSERT_USD_PER_200_MIB)
from transforms.proto_rows import RowEncoder

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MICROSECOND = timedelta(microseconds=1)


def _as_written(row: dict[str, Any]) -> dict[str, Any]:
    """A row read back with its TIMESTAMPs as the ISO strings the writer encodes."""
    return {name: iso_from_us((value - EPOCH) // MICROSECOND) if isinstance(value, datetime)
            else value for name, value in row.items()}


def bytes_per_row(client: Any, project: str, dataset: str, table: str,
                  sample: int = 2_000) -> dict[str, float]:
    """Mean bytes per stored row of ``table`` by each measure, and USD per million rows."""
    [cost] = [dict(r.items()) for r in client.query(
        f"SELECT SUM(row_count) AS n, SUM(approx_bytes) AS logical, SUM(billed_bytes) AS billed "
        f"FROM `{project}.{dataset}.rows_cost_by_day` WHERE table_name = '{table}'").result()]
    if not cost["n"]:
        return {}
    encoder = RowEncoder(table)
    stored = [_as_written(dict(r.items())) for r in client.query(
        f"SELECT * FROM `{project}.{dataset}.{table}` LIMIT {sample}").result()]
    proto = sum(len(encoder.encode(row)) for row in stored) / len(stored)
    billed = cost["billed"] / cost["n"]
    return {"rows": cost["n"], "logical": cost["logical"] / cost["n"], "proto": proto,
            "insertall_billed": billed,
            "insertall_usd_per_million": billed * 1e6 / (200 * 2 ** 20) * STREAMING_INSERT_USD_PER_200_MIB,
            "storage_write_usd_per_million": proto * 1e6 / 2 ** 30 * STORAGE_WRITE_USD_PER_GIB}
