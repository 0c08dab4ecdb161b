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
import time
import zlib
from typing import Any, Iterator, NamedTuple, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.pvalue import PCollection

from ingest.files import iter_chunks
from pipelines.options import MarketDataOptions
from transforms.bigquery import (STORAGE_WRITE_API, WriteRowsToBigQuery, ensure_tables,
                                 ensure_views, make_client, split_dataset_ref)
from transforms.candles import CandlesFromTicks, parse_timeframes
from transforms.schemas import CANDLES_TABLE, DEAD_LETTER_TABLE, TICKS_TABLE
from transforms.sequencer import SequenceCandles
from transforms.sinks import FinalizeRowsFn, PrintCandlesFn, WriteJsonLines
from transforms.dead_letter import DEAD_LETTER_TAG, dead_letter_on_error
from transforms.storage_write import storage_emulator_host
from transforms.storage_write_sink import PendingStreams
from transforms.tick_guard import GuardTicks
from transforms.ticks import ParseTicks, TickBatch, tick_rows

CSV_CHUNK_TICKS = 2_000  # ticks per element when replaying CSV files
# Downstream windows keep this much more lateness than the tick guard, so a tick the guard lets
# through is never dropped by a window that closed a moment earlier.
LATENESS_MARGIN_SECONDS = 60


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
            read = 0
            try:
                for element, ticks in iter_chunks(path, self._chunk_size):
                    yield element
                    read += ticks
                    progress.update(ticks)
            except (OSError, EOFError, zlib.error) as error:  # e.g. a truncated .gz
                # A record the parser dead-letters with this reason: the replay still finishes.
                yield [{"_error": f"{path} unreadable after {read} records: {error}", "_raw": path}]


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


class TickRowsFn(beam.DoFn):
    """A TickBatch → its ``ticks`` rows as one list, so a batch stays one element to the sink."""

    @dead_letter_on_error("tick_rows")
    def process(self, batch: TickBatch) -> Iterator[list[dict[str, Any]]]:
        yield tick_rows(batch)


class PipelineOutputs(NamedTuple):
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
        # Stamped on candle rows: after a restart, the newer job's rows supersede (SPEC §6).
        self._job_start_us = time.time_ns() // 1000

    def expand(self, messages: PCollection) -> PipelineOutputs:
        opts = self._options
        parsed = messages | "ParseTicks" >> ParseTicks(opts.max_future_seconds)
        guarded = parsed.ticks | "GuardTicks" >> GuardTicks(
            opts.allowed_lateness_seconds, opts.dedup_retention_seconds, self._bounded)
        failures = [parsed.dead_letter, guarded.dead_letter]
        ticks = candles = None
        if opts.mode in ("ticks", "both"):
            rows = guarded.unique | "TickRows" >> beam.ParDo(TickRowsFn()).with_outputs(
                DEAD_LETTER_TAG, main="rows")
            ticks = rows.rows
            failures.append(rows[DEAD_LETTER_TAG])
        if opts.mode in ("candles", "both"):
            timeframes = parse_timeframes(opts.timeframes)
            labels = {label for label, _ in timeframes}
            feature_timeframes = ({label for label, _ in parse_timeframes(opts.feature_timeframes)}
                                  if opts.feature_timeframes.strip() else set())
            if not feature_timeframes <= labels:
                raise ValueError(f"--feature_timeframes {sorted(feature_timeframes - labels)} are "
                                 f"not in --timeframes")
            lateness = opts.allowed_lateness_seconds + LATENESS_MARGIN_SECONDS
            panes = guarded.unique | "Candles" >> CandlesFromTicks(
                timeframes, lateness, opts.early_firing_seconds, self._bounded)
            sequenced = panes.candles | "SequenceCandles" >> SequenceCandles(
                timeframes, feature_timeframes, opts.gap_candles, opts.idle_timeout_seconds,
                lateness, self._bounded, self._job_start_us)
            candles = sequenced.rows
            failures += [panes.dead_letter, sequenced[DEAD_LETTER_TAG]]
        dead_letter = failures | "AllDeadLetters" >> beam.Flatten()
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
    """Starts the job (the Flex Template's entry point; ``mds run`` goes through ``main``)."""
    options = PipelineOptions(argv)
    opts = options.view_as(MarketDataOptions)
    options.view_as(StandardOptions).streaming = not opts.input_file
    if opts.output_dataset:
        prepare_bigquery(opts.output_dataset, opts.bigquery_write_method)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options,
                   console_timeframes={"1m"} if opts.console else None)
    return pipeline.run()


def main(argv: list[str]) -> int:
    """``mds run``: on the DirectRunner reading Pub/Sub, inside the local runner context
    (``pipelines.local_mode.local_runner``: durable, hostile-proof reads)."""
    logging.getLogger().setLevel(logging.INFO)
    options = PipelineOptions(argv)
    opts = options.view_as(MarketDataOptions)
    runner = options.view_as(StandardOptions).runner
    if not opts.input_subscription or not (runner is None or runner.endswith("DirectRunner")):
        run(argv).wait_until_finish()
        return 0
    from pipelines.local_mode import LocalRunOptions, local_runner
    from pipelines.local_pubsub import horizon_us

    seconds = [s for _, s in parse_timeframes(opts.timeframes)]
    journal = options.view_as(LocalRunOptions).local_journal_dir
    with local_runner(journal, horizon_us(seconds, opts.allowed_lateness_seconds)):
        run(argv).wait_until_finish()
    return 0
