"""The market-data pipeline: ticks in (Pub/Sub, or a file), ticks and/or candles out.

``build_pipeline`` extends a Pipeline and is shared by every way of running it: ``mds run``
(streaming, Pub/Sub), ``mds replay`` (bounded file replay on the DirectRunner), the Flex Template
(``templates/main.py``) and the tests.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.pvalue import PCollection

from ingest.files import FORMAT_TARDIS_CSV, iter_records, iter_tardis_columns, sniff_format
from pipelines.options import MarketDataOptions
from transforms.bigquery import (STORAGE_WRITE_API, WriteRowsToBigQuery, ensure_tables,
                                 ensure_views, make_client, split_dataset_ref)
from transforms.candles import CandlesFromTicks, parse_timeframes
from transforms.schemas import CANDLES_TABLE, DEAD_LETTER_TABLE, TICKS_TABLE
from transforms.sequencer import SequenceCandles
from transforms.sinks import FinalizeRowsFn, PrintCandlesFn, WriteJsonLines
from transforms.storage_write import storage_emulator_host
from transforms.storage_write_sink import PendingStreams
from transforms.ticks import DedupTicks, LateTicksToDeadLetterFn, ParseTicks, tick_rows

CSV_CHUNK_TICKS = 2_000  # ticks per element when replaying CSV files
# Downstream windows keep this much more lateness than the tick guard, so a tick the guard lets
# through is never dropped by a window that closed a moment earlier.
LATENESS_MARGIN_SECONDS = 60
# How long a closed 15 s bucket is remembered, so a tick that late is still dead-lettered as late.
LATE_TICK_MEMORY_SECONDS = 86_400


class ReadTickFileFn(beam.DoFn):
    """A trades file path → elements ParseTicksFn understands: JSONL lines, Tardis CSV column
    chunks, or record chunks of other CSVs."""

    def __init__(self, chunk_size: int = CSV_CHUNK_TICKS, progress_total: Optional[int] = None) -> None:
        self._chunk_size = chunk_size
        self._progress_total = progress_total

    def process(self, path: str) -> Iterator[Any]:
        from tqdm import tqdm

        with tqdm(total=self._progress_total, disable=not self._progress_total, unit="ticks",
                  unit_scale=True, desc="replay", file=sys.stderr, leave=False) as progress:
            for element, ticks in self._elements(path):
                yield element
                progress.update(ticks)

    def _elements(self, path: str) -> Iterator[tuple[Any, int]]:
        """(element, ticks it holds) pairs of the file."""
        if sniff_format(path) == FORMAT_TARDIS_CSV:  # the columnar fast path
            for columns in iter_tardis_columns(path):
                yield columns, columns.num_rows
            return
        chunk: list[Any] = []
        for record in iter_records(path):
            if isinstance(record, str):
                yield record, 1
                continue
            chunk.append(record)
            if len(chunk) >= self._chunk_size:
                yield chunk, len(chunk)
                chunk = []
        if chunk:
            yield chunk, len(chunk)


class ReadTicks(beam.PTransform):
    """Raw tick input: Pub/Sub messages (event time from the ``ts`` attribute) or a file."""

    def __init__(self, input_subscription: Optional[str], input_file: Optional[str],
                 progress_total: Optional[int] = None) -> None:
        super().__init__()
        if bool(input_subscription) == bool(input_file):
            raise ValueError("give exactly one of --input_subscription and --input_file")
        self._subscription = input_subscription
        self._file = input_file
        self._progress_total = progress_total

    def expand(self, begin: beam.pvalue.PBegin) -> PCollection:
        if self._file:
            return (begin
                    | "FilePath" >> beam.Create([self._file])
                    | "ReadFile" >> beam.ParDo(ReadTickFileFn(progress_total=self._progress_total)))
        return begin | "ReadPubSub" >> beam.io.ReadFromPubSub(
            subscription=self._subscription, timestamp_attribute="ts", with_attributes=True)


@dataclass
class PipelineOutputs:
    """The row collections a pipeline produced, for sinks and tests."""

    ticks: Optional[PCollection]  # lists of tick rows, one per TickBatch: ticks stay batched
    candles: Optional[PCollection]
    dead_letter: PCollection


class MarketData(beam.PTransform):
    """Raw messages → tick rows, candle rows (with features) and dead-letter rows (µs times)."""

    def __init__(self, options: MarketDataOptions, bounded: bool) -> None:
        super().__init__()
        self._options = options
        self._bounded = bounded

    def expand(self, messages: PCollection) -> PipelineOutputs:
        opts = self._options
        parsed = messages | "ParseTicks" >> ParseTicks(opts.max_future_seconds)
        guarded = parsed.ticks | "DedupTicks" >> DedupTicks(opts.allowed_lateness_seconds,
                                                            LATE_TICK_MEMORY_SECONDS, self._bounded)
        late_rows = guarded.late | "LateToDeadLetter" >> beam.ParDo(LateTicksToDeadLetterFn())
        dead_letter = (parsed.dead_letter, late_rows) | "AllDeadLetters" >> beam.Flatten()
        ticks = candles = None
        if opts.mode in ("ticks", "both"):
            ticks = guarded.unique | "TickRows" >> beam.Map(lambda batch: list(tick_rows(batch)))
        if opts.mode in ("candles", "both"):
            timeframes = parse_timeframes(opts.timeframes)
            labels = {label for label, _ in timeframes}
            feature_timeframes = ({label for label, _ in parse_timeframes(opts.feature_timeframes)}
                                  if opts.feature_timeframes.strip() else set())
            if not feature_timeframes <= labels:
                raise ValueError(f"--feature_timeframes {sorted(feature_timeframes - labels)} are "
                                 f"not in --timeframes")
            candles = (guarded.unique
                       | "Candles" >> CandlesFromTicks(
                           timeframes, opts.allowed_lateness_seconds + LATENESS_MARGIN_SECONDS,
                           opts.early_firing_seconds, self._bounded)
                       | "SequenceCandles" >> SequenceCandles(
                           timeframes, feature_timeframes, opts.gap_candles,
                           opts.idle_timeout_seconds,
                           opts.allowed_lateness_seconds + LATENESS_MARGIN_SECONDS, self._bounded))
        return PipelineOutputs(ticks, candles, dead_letter)


def build_pipeline(pipeline: beam.Pipeline, options: PipelineOptions,
                   progress_total: Optional[int] = None,
                   console_timeframes: Optional[set[str]] = None) -> PipelineOutputs:
    """Adds the whole job (read, transform, write every configured sink) to ``pipeline``."""
    opts = options.view_as(MarketDataOptions)
    bounded = bool(opts.input_file)
    messages = pipeline | "ReadTicks" >> ReadTicks(opts.input_subscription, opts.input_file,
                                                    progress_total)
    outputs = messages | "MarketData" >> MarketData(opts, bounded)
    tables = {TICKS_TABLE: outputs.ticks, CANDLES_TABLE: outputs.candles,
              DEAD_LETTER_TABLE: outputs.dead_letter}
    # A bounded run's Storage Write API rows stay in PENDING streams until one commit at its end.
    pending = (PendingStreams() if bounded and opts.output_dataset
               and opts.bigquery_write_method == STORAGE_WRITE_API else None)
    for table, rows in tables.items():
        if rows is None:
            continue
        batched = table == TICKS_TABLE
        if opts.output_dir:
            single_rows = rows | "UnbatchTickRows" >> beam.FlatMap(lambda batch: batch) if batched else rows
            single_rows | f"Write{table}Jsonl" >> WriteJsonLines(opts.output_dir, table)
        if opts.output_dataset:
            rows | f"Write{table}BigQuery" >> WriteRowsToBigQuery(
                table, opts.output_dataset, batched=batched, method=opts.bigquery_write_method,
                pending=pending)
    if pending is not None:
        pending.commit()
    if outputs.candles is not None and opts.output_topic:
        (outputs.candles
         | "CandleMessages" >> beam.ParDo(FinalizeRowsFn(CANDLES_TABLE))
         | "CandleJson" >> beam.Map(lambda row: json.dumps(row, separators=(",", ":")).encode("utf-8"))
         | "PublishCandles" >> beam.io.WriteToPubSub(opts.output_topic))
    if outputs.candles is not None and console_timeframes:
        outputs.candles | "Console" >> beam.ParDo(PrintCandlesFn(console_timeframes,
                                                                  show_latency=not bounded))
    return outputs


def prepare_bigquery(dataset_ref: str, write_method: str = STORAGE_WRITE_API) -> None:
    """Creates the dataset, tables and views if missing, before any row is written (SPEC §6).

    With ``BIGQUERY_EMULATOR_HOST`` set (local runs only), this client and the pipeline's writers
    use that local BigQuery API server, anonymously; the Storage Write API writer also needs
    ``BIGQUERY_STORAGE_EMULATOR_HOST`` (its gRPC host:port), checked here before the job starts.
    """
    if write_method == STORAGE_WRITE_API:
        storage_emulator_host()
    project, _ = split_dataset_ref(dataset_ref)
    client = make_client(project, os.environ.get("BIGQUERY_EMULATOR_HOST"))
    ensure_tables(client, dataset_ref)
    ensure_views(client, dataset_ref)


def run(argv: Optional[list[str]] = None) -> beam.runners.runner.PipelineResult:
    """Starts the streaming job (Flex Template and ``mds run`` entry point)."""
    options = PipelineOptions(argv)
    opts = options.view_as(MarketDataOptions)
    options.view_as(StandardOptions).streaming = not opts.input_file
    runner = options.view_as(StandardOptions).runner
    if opts.input_subscription and (runner is None or runner.endswith("DirectRunner")):
        from pipelines.local_mode import harden_pubsub_read

        harden_pubsub_read()  # local only: Dataflow's Pub/Sub source retries by itself
    if opts.output_dataset:
        prepare_bigquery(opts.output_dataset, opts.bigquery_write_method)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options,
                   console_timeframes={"1m"} if opts.console else None)
    return pipeline.run()


def main(argv: list[str]) -> int:
    logging.getLogger().setLevel(logging.INFO)
    run(argv).wait_until_finish()
    return 0
