"""A bounded run on this machine (``mds replay``, ``mds backfill``): files in, the whole pipeline,
output files merged and sorted, a summary per day and symbol.

Event time is exact here (a bounded source holds the watermark until every file is read), which
is why history goes this way locally rather than through the Pub/Sub emulator, whose DirectRunner
source puts the watermark at wall-clock time. ``workers`` > 1 runs the DirectRunner's
multi-processing mode: the files, tick buckets and candle keys are spread over worker processes.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.local_mode import local_bounded_runner
from pipelines.progress import ProgressBars
from pipelines.read_files import match_files
from pipelines.streaming_pipeline import build_pipeline
from transforms.bounded import SUMMARY_NAMESPACE, parse_summary_counter
from transforms.schemas import CANDLES_TABLE, DEAD_LETTER_TABLE, TICKS_TABLE
from transforms.sinks import FILE_SUFFIX

# How each output file is sorted: by time within series, what a reader expects.
SORT_KEYS: dict[str, tuple[str, ...]] = {
    CANDLES_TABLE: ("symbol", "timeframe", "timestamp_in", "revision"),
    TICKS_TABLE: ("symbol", "timestamp", "id"),
    DEAD_LETTER_TABLE: ("stage", "payload"),
}


@dataclass
class BoundedRun:
    """What to run: the pipeline options of a bounded job, plus how to run it here."""

    input_file: str  # path, glob or comma-separated list
    output_dir: Optional[str] = None
    output_format: str = "jsonl"
    output_dataset: Optional[str] = None
    bigquery_write_method: Optional[str] = None  # None: the option's default (Storage Write API)
    mode: str = "candles"
    timeframes: Optional[str] = None
    feature_timeframes: Optional[str] = None
    gap_candles: bool = True
    idle_timeout_seconds: int = 3600
    start_time: Optional[str] = None
    end_time: Optional[str] = None
    checkpoint_dir: Optional[str] = None
    workers: int = 1
    progress: bool = True
    console_timeframes: Optional[set[str]] = None
    merge_tables: tuple[str, ...] = (TICKS_TABLE, CANDLES_TABLE, DEAD_LETTER_TABLE)
    beam_args: list[str] = field(default_factory=list)  # e.g. --runner=DataflowRunner --project=…


def pipeline_options(run: BoundedRun) -> PipelineOptions:
    values: dict[str, Any] = dict(
        input_file=run.input_file, output_dir=run.output_dir, output_format=run.output_format,
        output_dataset=run.output_dataset, bigquery_write_method=run.bigquery_write_method,
        mode=run.mode, gap_candles=run.gap_candles,
        idle_timeout_seconds=run.idle_timeout_seconds, start_time=run.start_time,
        end_time=run.end_time, checkpoint_dir=run.checkpoint_dir, timeframes=run.timeframes,
        feature_timeframes=run.feature_timeframes)
    if _is_local(run):  # otherwise the flags given pick the runner and its settings
        values["runner"] = "DirectRunner"
        if run.workers > 1:
            values.update(direct_running_mode="multi_processing", direct_num_workers=run.workers,
                          max_cache_memory_usage_mb=0)
        else:
            values["direct_running_mode"] = "in_memory"
    return PipelineOptions(flags=run.beam_args, **{k: v for k, v in values.items() if v is not None})


def _is_local(run: BoundedRun) -> bool:
    runner = PipelineOptions(run.beam_args).view_as(StandardOptions).runner
    return runner is None or runner.endswith("DirectRunner")


def run_bounded(run: BoundedRun) -> dict[str, Any]:
    """Runs the job to the end; returns its summary (ticks, rows, per day and symbol, speed)."""
    files = match_files(run.input_file)  # a pattern without files fails here, before any work
    local = _is_local(run)
    if run.output_dir and local:
        os.makedirs(run.output_dir, exist_ok=True)
        _remove_outputs(run.output_dir)
    progress_dir = tempfile.mkdtemp(prefix="mds-progress-") if run.progress and local else None
    bars = ProgressBars(progress_dir, len(files)) if progress_dir else None
    started = time.monotonic()
    try:
        options = pipeline_options(run)
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, options, progress_dir=progress_dir,
                       console_timeframes=run.console_timeframes)
        if bars:
            bars.start()
        with local_bounded_runner() if local else contextlib.nullcontext():
            result = pipeline.run()
            result.wait_until_finish()
    finally:
        if bars:
            bars.stop()
        if progress_dir:
            shutil.rmtree(progress_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    summary = summarize(result, files=len(files), seconds=elapsed)
    if run.output_dir and local:
        summary["rows_per_file"] = {table: merge_outputs(run.output_dir, table, run.output_format,
                                                         merge=table in run.merge_tables)
                                    for table in SORT_KEYS}
        if os.path.exists(_merged_path(run.output_dir, CANDLES_TABLE, run.output_format)):
            summary["candles_per_timeframe"] = candles_per_timeframe(
                _merged_path(run.output_dir, CANDLES_TABLE, run.output_format), run.output_format)
    summary.update(input=run.input_file, output_dir=run.output_dir)
    return summary


def summarize(result: Any, files: int, seconds: float) -> dict[str, Any]:
    """Counters of the finished run: totals and the table per (symbol, day)."""
    counters: dict[str, int] = {}
    per_day: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for counter in result.metrics().query()["counters"]:
        name, value = counter.key.metric.name, counter.committed or 0
        if counter.key.metric.namespace == SUMMARY_NAMESPACE:
            parsed = parse_summary_counter(name)
            if parsed:
                kind, symbol, day = parsed
                per_day[(symbol, day)][kind] += value
            continue
        counters[name] = counters.get(name, 0) + value
    ticks = counters.get("unique_ticks", 0)
    return {
        "files": files, "seconds": round(seconds, 2),
        "valid_ticks": counters.get("valid_ticks", 0), "unique_ticks": ticks,
        "duplicate_ticks": counters.get("duplicate_ticks", 0),
        "out_of_range_ticks": counters.get("out_of_range_ticks", 0),
        "dead_letter_rows": sum(c["dead_letters"] for c in per_day.values()),
        "candle_rows": sum(c["candles"] for c in per_day.values()),
        "ticks_per_second": round(ticks / seconds) if seconds else None,
        "per_day": [{"symbol": symbol, "day": day, "ticks": c["ticks"], "candles": c["candles"],
                     "dead_letters": c["dead_letters"]}
                    for (symbol, day), c in sorted(per_day.items())],
    }


def format_per_day(summary: dict[str, Any]) -> list[str]:
    """The per day and symbol table as printable lines."""
    lines = [f"   {'symbol':<14} {'day':<10} {'ticks':>12} {'candles':>9} {'dead letters':>12}"]
    for row in summary["per_day"]:
        lines.append(f"   {row['symbol']:<14} {row['day']:<10} {row['ticks']:>12,} "
                     f"{row['candles']:>9,} {row['dead_letters']:>12,}")
    return lines


# ------------------------------------------------------------------------------ output files

def _merged_path(output_dir: str, table: str, file_format: str) -> str:
    return os.path.join(output_dir, table + FILE_SUFFIX[file_format])


def _shards(output_dir: str, table: str, file_format: str) -> list[str]:
    return sorted(glob.glob(os.path.join(output_dir, f"{table}-*-of-*{FILE_SUFFIX[file_format]}")))


def _remove_outputs(output_dir: str) -> None:
    """Outputs of an earlier run in the same directory would mix with this one's."""
    for table in SORT_KEYS:
        for file_format in FILE_SUFFIX:
            for path in [_merged_path(output_dir, table, file_format)] + _shards(output_dir, table, file_format):
                if os.path.exists(path):
                    os.remove(path)


def merge_outputs(output_dir: str, table: str, file_format: str, merge: bool = True) -> int:
    """Shards of a table → one file sorted by SORT_KEYS (``merge``), else the shards stay (a
    month of raw ticks is read with a glob, not sorted in memory). Returns the row count."""
    shards = _shards(output_dir, table, file_format)
    if not merge:
        return sum(_row_count(path, file_format) for path in shards)
    target = _merged_path(output_dir, table, file_format)
    if file_format == "parquet":
        rows = _merge_parquet(shards, target, table)
    else:
        rows = _merge_jsonl(shards, target, table)
    for path in shards:
        os.remove(path)
    return rows


def _row_count(path: str, file_format: str) -> int:
    if file_format == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def _key_columns(data: bytes, columns: tuple[str, ...]) -> Any:
    """Just the named columns of JSON lines, parsed by Arrow in C++ (the rest is skipped)."""
    import io

    import pyarrow as pa
    from pyarrow import json as pa_json

    types = {"revision": pa.int64()}
    schema = pa.schema([(name, types.get(name, pa.string())) for name in columns])
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return pa_json.read_json(io.BytesIO(data), parse_options=options)


def _merge_jsonl(shards: list[str], target: str, table: str) -> int:
    """Lines are read for their sort key only and written back as the sink wrote them."""
    import pyarrow.compute as pc

    lines: list[bytes] = []
    for path in shards:
        with open(path, "rb") as handle:
            lines.extend(line if line.endswith(b"\n") else line + b"\n" for line in handle if line.strip())
    order: list[int] = []
    if lines:
        keys = _key_columns(b"".join(lines), SORT_KEYS[table])
        order = pc.sort_indices(keys, sort_keys=[(name, "ascending") for name in SORT_KEYS[table]]).to_pylist()
    with open(target, "wb") as handle:
        handle.writelines(lines[i] for i in order)
    return len(lines)


def _merge_parquet(shards: list[str], target: str, table: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from transforms.schemas import arrow_schema

    schema = arrow_schema(table)
    merged = pa.concat_tables([pq.read_table(path, schema=schema) for path in shards]) \
        if shards else schema.empty_table()
    merged = merged.sort_by([(name, "ascending") for name in SORT_KEYS[table]])
    pq.write_table(merged, target, compression="snappy")
    return merged.num_rows


def candles_per_timeframe(path: str, file_format: str) -> dict[str, int]:
    if file_format == "parquet":
        import pyarrow.parquet as pq

        return dict(Counter(pq.read_table(path, columns=["timeframe"]).column(0).to_pylist()))
    with open(path, "rb") as handle:
        data = handle.read()
    return dict(Counter(_key_columns(data, ("timeframe",)).column(0).to_pylist())) if data.strip() else {}
