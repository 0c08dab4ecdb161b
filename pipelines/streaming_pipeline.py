"""The market-data pipeline: ticks in (Pub/Sub, or a file), ticks and/or candles out.

``build_pipeline`` extends a Pipeline and is shared by every way of running it: ``mds run``
(streaming, Pub/Sub), ``mds replay`` and ``mds backfill`` (bounded: files, in parallel), the Flex
Template (``templates/main.py``, streaming or bounded) and the tests.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from typing import Any, Iterator, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.pvalue import PCollection

from ingest.message import parse_time_us
from pipelines.options import MarketDataOptions
from pipelines.read_files import ReadTickFiles
from reconcile.fetch import parse_endpoints
from transforms.bigquery import ensure_tables, ensure_views, make_client, split_dataset_ref
from transforms.bigquery_sink import STORAGE_WRITE_API, WriteRowsToBigQuery
from transforms.bounded import CountPerDaySymbolFn, KeepRangeFn
from transforms.bounded_candles import BoundedCandles
from transforms.candle_series import CandleSeries
from transforms.candles import CandlesFromTicks, parse_timeframes
from transforms.checkpoint import WriteCheckpointFn, read_checkpoints
from transforms.dead_letter import DEAD_LETTER_TAG, dead_letter_on_error
from transforms.global_flatten import GlobalFlatten
from transforms.reconcile_candles import RECONCILE_TIMEFRAME, ReconcileCandles, ReconcileCandlesFn
from transforms.schemas import CANDLES_TABLE, DEAD_LETTER_TABLE, RECONCILIATION_TABLE, TICKS_TABLE
from transforms.sequencer import SequenceCandles, SequenceCandlesFn
from transforms.sinks import (FinalizeRowsFn, PrintCandlesFn, WriteJsonLines, WriteRowFiles)
from transforms.storage_write import storage_emulator_host
from transforms.storage_write_sink import PendingStreams
from transforms.tick_guard import GuardTicks
from transforms.tick_batch import MarketKey, TickBatch, tick_rows
from transforms.ticks import ParseTicks

# Downstream windows keep this much more lateness than the tick guard, so a tick the guard lets
# through is never dropped by a window that closed a moment earlier.
LATENESS_MARGIN_SECONDS = 60


class ReadTicks(beam.PTransform):
    """Raw tick input: Pub/Sub messages (event time from the ``ts`` attribute) or files."""

    def __init__(self, input_subscription: Optional[str], input_file: Optional[str],
                 progress_dir: Optional[str] = None) -> None:
        super().__init__()
        if bool(input_subscription) == bool(input_file):
            raise ValueError("give exactly one of --input_subscription and --input_file")
        self._subscription = input_subscription
        self._file = input_file
        self._progress_dir = progress_dir

    def expand(self, begin: beam.pvalue.PBegin) -> PCollection:
        if self._file:
            return begin | "ReadFiles" >> ReadTickFiles(self._file, self._progress_dir)
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
    reconciliation: Optional[PCollection] = None  # --reconcile_delay_seconds: candle_reconciliation rows


class MarketData(beam.PTransform):
    """Raw messages → tick rows, candle rows (with features) and dead-letter rows (µs times)."""

    def __init__(self, options: MarketDataOptions, bounded: bool) -> None:
        super().__init__()
        self._options = options
        self._bounded = bounded
        self._start_us, self._end_us = time_range(options) if bounded else (None, None)
        # Stamped on candle rows: after a restart, the newer job's rows supersede (SPEC §3.4).
        self._job_start_us = time.time_ns() // 1000

    def expand(self, messages: PCollection) -> PipelineOutputs:
        opts = self._options
        parsed = messages | "ParseTicks" >> ParseTicks(opts.max_future_seconds)
        keyed, failures = parsed.ticks, [parsed.dead_letter]
        if self._start_us is not None or self._end_us is not None:
            in_range = keyed | "KeepRange" >> beam.ParDo(
                KeepRangeFn(self._start_us, self._end_us)).with_output_types(
                    Tuple[MarketKey, TickBatch]).with_outputs(DEAD_LETTER_TAG, main="ticks")
            keyed = in_range.ticks
            failures.append(in_range[DEAD_LETTER_TAG])
        timeframes = parse_timeframes(opts.timeframes)
        labels = {label for label, _ in timeframes}
        feature_timeframes = ({label for label, _ in parse_timeframes(opts.feature_timeframes)}
                              if opts.feature_timeframes.strip() else set())
        if not feature_timeframes <= labels:
            raise ValueError(f"--feature_timeframes {sorted(feature_timeframes - labels)} are "
                             f"not in --timeframes")
        with_candles = opts.mode in ("candles", "both")
        lateness = opts.allowed_lateness_seconds + LATENESS_MARGIN_SECONDS
        series = CandleSeries(dict(timeframes), feature_timeframes, opts.gap_candles,
                              opts.idle_timeout_seconds, lateness, self._bounded,
                              self._job_start_us, self._end_us)
        candles = None
        if self._bounded:  # all ticks at hand: hour groups, no per-bucket state (bounded_candles)
            bounded = keyed | "BoundedCandles" >> BoundedCandles(
                timeframes if with_candles else [], series, feature_timeframes,
                checkpoints=bool(opts.checkpoint_dir) and with_candles)
            unique = bounded.ticks
            candles = bounded.candles if with_candles else None
            failures.append(bounded.dead_letter)
            if bounded.checkpoints is not None:
                bounded.checkpoints | "WriteCheckpoints" >> beam.ParDo(WriteCheckpointFn(opts.checkpoint_dir))
        else:
            guarded = keyed | "GuardTicks" >> GuardTicks(
                opts.allowed_lateness_seconds, opts.dedup_retention_seconds)
            unique = guarded.unique
            failures.append(guarded.dead_letter)
            if with_candles:
                panes = unique | "Candles" >> CandlesFromTicks(timeframes, lateness,
                                                               opts.early_firing_seconds)
                sequenced = panes.candles | "SequenceCandles" >> SequenceCandles(SequenceCandlesFn(series), [
                    (key, checkpoint.state) for key, checkpoint in
                    (read_checkpoints(opts.checkpoint_dir) if opts.checkpoint_dir else [])])
                candles = sequenced.rows
                failures += [panes.dead_letter, sequenced[DEAD_LETTER_TAG]]
        reconciliation = None
        if opts.reconcile_delay_seconds:
            _check_reconciliation(opts, self._bounded, labels)
            reconciled = candles | "ReconcileCandles" >> ReconcileCandles(ReconcileCandlesFn(
                opts.reconcile_delay_seconds, parse_endpoints(opts.reconcile_endpoints)))
            reconciliation = reconciled.rows
            failures.append(reconciled[DEAD_LETTER_TAG])
        ticks = None
        if opts.mode in ("ticks", "both"):
            rows = unique | "TickRows" >> beam.ParDo(TickRowsFn()).with_outputs(
                DEAD_LETTER_TAG, main="rows")
            ticks = rows.rows
            failures.append(rows[DEAD_LETTER_TAG])
        dead_letter = tuple(failures) | "AllDeadLetters" >> GlobalFlatten()
        if self._bounded:  # the per day and symbol summary of a backfill
            unique | "CountTicks" >> beam.ParDo(CountPerDaySymbolFn("ticks"))
            dead_letter | "CountDeadLetters" >> beam.ParDo(CountPerDaySymbolFn("dead_letters"))
            if candles is not None:
                candles | "CountCandles" >> beam.ParDo(CountPerDaySymbolFn("candles"))
        return PipelineOutputs(ticks, candles, dead_letter, reconciliation)


def _check_reconciliation(opts: MarketDataOptions, bounded: bool, timeframes: set[str]) -> None:
    """The streaming reconciliation compares final 1m candles as they close; a bounded run has
    ``mds reconcile``, which asks the venue for a whole range at once."""
    if bounded:
        raise ValueError("--reconcile_delay_seconds is for streaming jobs; reconcile a bounded run's "
                         "output with `mds reconcile --input-dir` or `--dataset`")
    if opts.mode == "ticks" or RECONCILE_TIMEFRAME[0] not in timeframes:
        raise ValueError(f"--reconcile_delay_seconds needs candles (--mode candles or both) with "
                         f"{RECONCILE_TIMEFRAME[0]} in --timeframes")


def time_range(opts: MarketDataOptions) -> tuple[Optional[int], Optional[int]]:
    """(start, end) µs of a bounded run's requested range (--start_time, --end_time), or None."""
    start, end = ((parse_time_us(text) if text else None) for text in (opts.start_time, opts.end_time))
    if start is not None and end is not None and end <= start:
        raise ValueError(f"--end_time {opts.end_time} is not after --start_time {opts.start_time}")
    return start, end


def build_pipeline(pipeline: beam.Pipeline, options: PipelineOptions,
                   progress_dir: Optional[str] = None,
                   console_timeframes: Optional[set[str]] = None) -> PipelineOutputs:
    """Adds the whole job (read, transform, write every configured sink) to ``pipeline``."""
    opts = options.view_as(MarketDataOptions)
    bounded = bool(opts.input_file)
    if opts.output_dir and opts.output_format != "jsonl" and not bounded:
        raise ValueError("--output_format=parquet needs a bounded run (--input_file)")
    messages = pipeline | "ReadTicks" >> ReadTicks(opts.input_subscription, opts.input_file,
                                                    progress_dir)
    outputs = messages | "MarketData" >> MarketData(opts, bounded)
    tables = {TICKS_TABLE: outputs.ticks, CANDLES_TABLE: outputs.candles,
              DEAD_LETTER_TABLE: outputs.dead_letter, RECONCILIATION_TABLE: outputs.reconciliation}
    # A bounded run's Storage Write API rows stay in PENDING streams until one commit at its end.
    pending = (PendingStreams() if bounded and opts.output_dataset
               and opts.bigquery_write_method == STORAGE_WRITE_API else None)
    for table, rows in tables.items():
        if rows is None:
            continue
        batched = table == TICKS_TABLE
        if opts.output_dir:
            single_rows = rows | "UnbatchTickRows" >> beam.FlatMap(lambda batch: batch) if batched else rows
            if bounded:
                single_rows | f"Write{table}Files" >> WriteRowFiles(opts.output_dir, table,
                                                                    opts.output_format)
            else:
                single_rows | f"Write{table}Jsonl" >> WriteJsonLines(opts.output_dir, table)
        if opts.output_dataset:
            # historical rows (bounded) carry no latency: they stay out of the latency views
            rows | f"Write{table}BigQuery" >> WriteRowsToBigQuery(
                table, opts.output_dataset, batched=batched, with_latency=not bounded,
                method=opts.bigquery_write_method, pending=pending)
    if pending is not None:
        pending.commit()
    if outputs.candles is not None and opts.output_topic:
        (outputs.candles
         | "CandleMessages" >> beam.ParDo(FinalizeRowsFn(CANDLES_TABLE, with_latency=not bounded))
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


PASSES_BEAM_OPTIONS = True  # every argument of ``mds run`` is a pipeline option (docs/options.md)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """None of its own: ``mds run`` takes the pipeline options, as the Flex Template does."""
    parser.epilog = "Pipeline options (--name=value, as the Flex Template's parameters): docs/options.md"


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``mds run``: on the DirectRunner reading Pub/Sub, inside the local runner context
    (``pipelines.local_mode.local_runner``: durable, hostile-proof reads)."""
    argv = args.beam_args
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
