"""Output rows: latency columns, timestamp formatting, local JSONL files and console lines.

Rows travel through the pipeline with times as µs integers; they are stamped with
``timestamp_out``/``latency_ms`` and their TIMESTAMP columns turned into ISO-8601 UTC strings
right before a sink writes them, so latency measures the whole pipeline (SPEC §4). Rows of a
bounded run (replay, backfill) describe the past: their ``latency_ms`` is NULL, so history never
enters the latency views (which skip NULLs), while ``timestamp_out`` still says when they were made.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from ingest.message import iso_from_us, parse_time_us
from transforms.schemas import CANDLES_TABLE, DEAD_LETTER_TABLE, FIELDS, RECONCILIATION_TABLE, TICKS_TABLE

# The column each table's latency is measured from.
LATENCY_FROM = {CANDLES_TABLE: "window_end", TICKS_TABLE: "timestamp", DEAD_LETTER_TABLE: None,
                RECONCILIATION_TABLE: None}
TIMESTAMP_COLUMNS = {table: tuple(f["name"] for f in fields if f["type"] == "TIMESTAMP")
                     for table, fields in FIELDS.items()}
COLUMNS = {table: tuple(f["name"] for f in fields) for table, fields in FIELDS.items()}


def finalize_row(row: Mapping[str, Any], table: str, now_us: Optional[int] = None,
                 with_latency: bool = True, iso_times: bool = True) -> dict[str, Any]:
    """Stamp processing time and latency, keep only the table's columns, format timestamps.

    Times given as µs integers become ISO-8601 strings (``iso_times``; Parquet keeps them typed);
    strings are left for the row check to judge. A latency source that cannot be read, or a
    historical row (``with_latency=False``), leaves ``latency_ms`` NULL.
    """
    now_us = time.time_ns() // 1_000 if now_us is None else now_us
    out = {name: row.get(name) for name in COLUMNS[table]}
    out["timestamp_out"] = now_us
    source = LATENCY_FROM[table]
    if source is not None:
        out["latency_ms"] = None
        try:
            if with_latency:
                out["latency_ms"] = (now_us - parse_time_us(row[source])) / 1000.0
        except (KeyError, TypeError, ValueError):
            pass
    if not iso_times:
        return out
    for name in TIMESTAMP_COLUMNS[table]:
        if isinstance(out.get(name), int) and not isinstance(out[name], bool):
            out[name] = iso_from_us(out[name])
    return out


class FinalizeRowsFn(beam.DoFn):
    """Applies ``finalize_row`` at the last step before a sink."""

    def __init__(self, table: str, with_latency: bool = True, iso_times: bool = True) -> None:
        self._table = table
        self._with_latency = with_latency
        self._iso_times = iso_times

    def process(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield finalize_row(row, self._table, with_latency=self._with_latency,
                           iso_times=self._iso_times)


class AppendJsonLinesFn(beam.DoFn):
    """Appends rows as JSON lines to a local file (DirectRunner runs: replay and local demo).

    Works in batch and streaming alike, unlike WriteToText, whose streaming form needs windows.
    """

    _locks: dict[str, threading.Lock] = {}

    def __init__(self, path: str) -> None:
        self._path = path
        self.rows = Metrics.counter("sinks", f"jsonl_rows_{os.path.basename(path)}")

    def setup(self) -> None:
        self._lock = self._locks.setdefault(self._path, threading.Lock())
        self._buffer: list[str] = []

    def start_bundle(self) -> None:
        self._buffer = []

    def process(self, row: dict[str, Any]) -> None:
        self._buffer.append(json.dumps(row, separators=(",", ":")))

    def finish_bundle(self) -> None:
        if not self._buffer:
            return
        with self._lock, open(self._path, "a", encoding="utf-8") as handle:
            handle.write("\n".join(self._buffer) + "\n")
        self.rows.inc(len(self._buffer))
        self._buffer = []


class WriteJsonLines(beam.PTransform):
    """Rows of a table → DIR/<table>.jsonl (latency columns and ISO timestamps filled)."""

    def __init__(self, output_dir: str, table: str) -> None:
        super().__init__()
        self._path = os.path.join(output_dir, f"{table}.jsonl")
        self._table = table

    def expand(self, rows: beam.PCollection) -> beam.PDone:
        return (rows
                | "Finalize" >> beam.ParDo(FinalizeRowsFn(self._table))
                | "Append" >> beam.ParDo(AppendJsonLinesFn(self._path)))


SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
FILE_SUFFIX = {"jsonl": ".jsonl", "parquet": ".parquet"}


class WriteRowFiles(beam.PTransform):
    """Bounded runs: rows of a table → DIR/<table>-SSSSS-of-NNNNN.<jsonl|parquet>.

    Beam's file sinks write one shard per worker bundle and rename them into place when the run
    succeeds, which is right with parallel workers and on gs://, where appending to one file is
    not. Rows are historical: ``latency_ms`` NULL. Parquet keeps TIMESTAMP columns typed (µs, UTC).
    """

    def __init__(self, output_dir: str, table: str, file_format: str) -> None:
        super().__init__()
        self._prefix = os.path.join(output_dir, table)
        self._table = table
        self._format = file_format

    def expand(self, rows: beam.PCollection) -> beam.PDone:
        parquet = self._format == "parquet"
        finished = rows | "Finalize" >> beam.ParDo(
            FinalizeRowsFn(self._table, with_latency=False, iso_times=not parquet))
        if parquet:
            from transforms.schemas import arrow_schema

            return finished | "WriteParquet" >> beam.io.WriteToParquet(
                self._prefix, arrow_schema(self._table), codec="snappy",
                file_name_suffix=FILE_SUFFIX["parquet"], shard_name_template=SHARD_TEMPLATE)
        return (finished
                | "Json" >> beam.Map(lambda row: json.dumps(row, separators=(",", ":")))
                | "WriteText" >> beam.io.WriteToText(
                    self._prefix, file_name_suffix=FILE_SUFFIX["jsonl"],
                    shard_name_template=SHARD_TEMPLATE))


def _hhmmss(value: Any) -> str:
    """'20:15:00' from µs since epoch or an ISO-8601 string."""
    return datetime.fromtimestamp(parse_time_us(value) / 1e6, tz=timezone.utc).strftime("%H:%M:%S")


def format_price(value: float) -> str:
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.6g}"


def _number(value: Any, spec: str) -> Optional[str]:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else format(number, spec)


def format_candle_lines(row: Mapping[str, Any]) -> list[str]:
    """The seed's candle and feature lines for one candle row (µs or ISO times alike)."""
    volume = float(row.get("volume") or 0.0)
    notes = []
    if row.get("is_gap"):
        notes.append("gap")
    if row.get("is_final") is False:
        notes.append("provisional")
    if int(row.get("revision") or 0) > 0:
        notes.append(f"rev {int(row['revision'])}")
    suffix = f" [{', '.join(notes)}]" if notes else ""
    lines = [f"🕯️ {row['timeframe']} CANDLE: {row['symbol']} {_hhmmss(row['timestamp_in'])} → "
             f"{format_price(float(row['close']))} ({int(row.get('trades') or 0)} trades, {volume:.2f} vol)"
             f"{suffix}"]
    features = [("SMA(5)", _number(row.get("sma_5"), ".6g")),
                ("RSI(5)", _number(row.get("rsi_5"), ".1f")),
                ("Momentum", _number(row.get("momentum_5", row.get("momentum_3")), ".4f"))]
    shown = [f"{name}={value}" for name, value in features if value is not None]
    if shown:
        lines.append("📊 HFT Features: " + ", ".join(shown))
    return lines


def candle_console_lines(row: Mapping[str, Any], now_us: Optional[int] = None,
                         show_latency: bool = True) -> list[str]:
    """The seed's price line of one candle, then its candle and feature lines.

    A replay of history has no meaningful latency (the candle closed years ago): it omits it.
    """
    now_us = time.time_ns() // 1_000 if now_us is None else now_us
    change = row["close"] - row["open"]
    percent = 100.0 * change / row["open"] if row["open"] else 0.0
    latency_ms = (now_us - parse_time_us(row["window_end"])) / 1000.0
    marker = "🟢" if change >= 0 else "🔴"
    partial = " [partial]" if row.get("is_partial") else ""
    return [f"{marker} {_hhmmss(row['timestamp_in'])} | {row['symbol']} {row['timeframe']} | "
            f"O={row['open']:.2f} H={row['high']:.2f} L={row['low']:.2f} C={row['close']:.2f} | "
            f"V={row['volume']:.4f} T={row['trades']} | Δ{change:+.2f} ({percent:+.2f}%)"
            + (f" | Latency={latency_ms:.1f}ms" if show_latency else "") + partial] \
        + format_candle_lines(row)


class PrintCandlesFn(beam.DoFn):
    """Prints the seed-style console lines of candles of the chosen timeframes."""

    def __init__(self, timeframes: set[str], show_latency: bool) -> None:
        self._timeframes = timeframes
        self._show_latency = show_latency

    def process(self, row: dict[str, Any]) -> None:
        if row["timeframe"] in self._timeframes:
            print("\n".join(candle_console_lines(row, show_latency=self._show_latency)), flush=True)
