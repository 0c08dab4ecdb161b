"""The BigQuery writers alone: the same tick rows through each write method's DoFn into a fresh
local server, rows/s and bytes per row side by side.

The DoFns (``AppendRowsFn`` on the ``_default`` stream, ``InsertRowsFn``) are driven directly, one
bundle per tick batch of 2,000 rows as in the streaming job, without a Beam runner: the clock
covers what the writer does per row (finish, check, encode, send, wait for the answers), not
graph construction or the runner's own per-element cost, which are the same for both.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

from bench.bigquery_bytes import bytes_per_row
from ingest.message import iso_from_us

BATCH_TICKS = 2_000


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def tick_batches(frame: Any, ticks: int) -> list[list[dict[str, Any]]]:
    """The first ``ticks`` trades of a day (bench.generate_day columns) as tick rows, batched."""
    part = frame.iloc[:ticks]
    rows = [{"exchange": exchange, "symbol": symbol, "native_symbol": symbol.replace("-", ""),
             "id": str(trade_id), "price": float(price), "amount": float(amount), "side": side,
             "timestamp": iso_from_us(int(ts)), "local_timestamp": iso_from_us(int(local_ts))}
            for exchange, symbol, trade_id, price, amount, side, ts, local_ts in zip(
                part["exchange"].astype(str), part["symbol"].astype(str), part["id"],
                part["price"], part["amount"], part["side"].astype(str), part["timestamp"],
                part["local_timestamp"])]
    return [rows[i:i + BATCH_TICKS] for i in range(0, len(rows), BATCH_TICKS)]


def measure_writer(batches: list[list[dict[str, Any]]], method: str, project: str,
                   dataset: str) -> dict[str, Any]:
    """Seconds to write ``batches`` with ``method`` into a new local server; what it stored."""
    from pipelines.emulators import BigQueryEmulator
    from transforms.bigquery import (
        STREAMING_INSERTS,
        InsertRowsFn,
        ensure_tables,
        ensure_views,
        make_client,
    )
    from transforms.storage_write_sink import AppendRowsFn

    with BigQueryEmulator(project=project) as server, _environment(server.client_env()):
        client = make_client(project, server.endpoint)
        ensure_tables(client, f"{project}:{dataset}")
        ensure_views(client, f"{project}:{dataset}")
        writer = (InsertRowsFn if method == STREAMING_INSERTS else AppendRowsFn)(
            project, dataset, "ticks", batched=True)
        writer.setup()
        failed = 0
        started = time.perf_counter()
        for batch in batches:
            writer.start_bundle()
            failed += sum(1 for _ in writer.process(batch))
            failed += sum(1 for _ in writer.finish_bundle())
        seconds = time.perf_counter() - started
        writer.teardown()
        stored = int(list(client.query(
            f"SELECT COUNT(*) AS n FROM `{project}.{dataset}.ticks`").result())[0]["n"])
        sizes = bytes_per_row(client, project, dataset, "ticks")
        client.close()
    return {"seconds": seconds, "stored": stored, "failed": failed, "sizes": sizes}
