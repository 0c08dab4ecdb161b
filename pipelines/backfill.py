"""``mds backfill``: a range of days × symbols through the bounded pipeline, in parallel, exactly.

    mds backfill --exchange binance --symbols BTC-USDT,ETH-USDT --from 2024-01-01 --to 2024-02-01

Days come from Tardis.dev's downloadable datasets (``ingest.datasets``: cached, never fetched
twice; API key from TARDIS_API_KEY), or from files you already have (``--input``: paths, globs,
gs:// patterns). The requested range [--from, --to) bounds the run: ticks outside it are
dead-lettered, gap candles stop at --to, and with --checkpoint-dir a streaming job started at
--to continues every series, features included (docs/runbook.md, "Backfill, then go live"). The same job runs on Dataflow from the Flex Template
with ``input_file`` set to a gs:// pattern; extra Beam flags given after ``--`` are passed through.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from ingest import datasets
from pipelines.bounded_run import BoundedRun, format_per_day, run_bounded
from pipelines.options import (DEFAULT_FEATURE_TIMEFRAMES, DEFAULT_TIMEFRAMES, MODES,
                               OUTPUT_FORMATS, MarketDataOptions)
from transforms.schemas import CANDLES_TABLE, DEAD_LETTER_TABLE

PASSES_BEAM_OPTIONS = True  # unknown arguments are pipeline options (--runner=DataflowRunner, ...)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The arguments of ``mds backfill ARGV`` and the pipeline options among them."""
    from pipelines.cli import parse_command

    args = parse_command("backfill", argv)
    return args, args.beam_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exchange", help="exchange of the Tardis datasets, e.g. binance")
    parser.add_argument("--symbols", help="comma-separated, as users write them: BTC-USDT,ETH-USDT")
    parser.add_argument("--from", dest="from_date", help="first UTC day, YYYY-MM-DD (inclusive)")
    parser.add_argument("--to", dest="to_date", help="last UTC day, YYYY-MM-DD (exclusive)")
    parser.add_argument("--data-type", default="trades", choices=datasets.DATA_TYPES)
    parser.add_argument("--input", help="existing trade files instead of a download: paths, globs "
                                        "or gs:// patterns, comma-separated")
    parser.add_argument("--cache-dir", default=os.path.join("out", "datasets"),
                        help="where downloaded days are kept (and found again)")
    parser.add_argument("--endpoint", default=datasets.DEFAULT_ENDPOINT, help="Tardis datasets endpoint")
    parser.add_argument("--download-only", action="store_true", help="fetch the files, run nothing")
    parser.add_argument("--output-dir", default=None,
                        help="write candles/dead_letter (one sorted file each) and ticks (shards) "
                             "here; default out/backfill unless --output-dataset is given")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="jsonl")
    parser.add_argument("--output-dataset", help="BigQuery dataset PROJECT:DATASET")
    parser.add_argument("--checkpoint-dir", help="write each series' end state here, for a "
                                                 "streaming job to continue from --to "
                                                 "(mds run --checkpoint_dir=DIR)")
    parser.add_argument("--mode", choices=MODES, default="candles")
    parser.add_argument("--timeframes", default=DEFAULT_TIMEFRAMES)
    parser.add_argument("--feature-timeframes", default=DEFAULT_FEATURE_TIMEFRAMES)
    parser.add_argument("--no-gap-candles", action="store_true")
    parser.add_argument("--idle-timeout-seconds", type=int, default=3600)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="local worker processes (DirectRunner); default: every core")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def check_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """A download needs its whole range; output goes to out/backfill unless a dataset is given."""
    if args.input is None:
        missing = [flag for flag, value in (("--exchange", args.exchange), ("--symbols", args.symbols),
                                            ("--from", args.from_date), ("--to", args.to_date)) if not value]
        if missing:
            parser.error(f"{', '.join(missing)} needed to download datasets (or give --input FILES)")
    if args.output_dir is None and not args.output_dataset:
        args.output_dir = os.path.join("out", "backfill")


def input_files(args: argparse.Namespace) -> str:
    """The --input_file value of the run: the given patterns, or the downloaded days."""
    if args.input:
        return args.input
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    result = datasets.download(args.exchange, symbols, args.from_date, args.to_date,
                               data_type=args.data_type, cache_dir=args.cache_dir,
                               endpoint=args.endpoint)
    if not args.quiet:
        print(f"⬇️  {len(result.files)} day files: {result.fetched} downloaded, "
              f"{len(result.files) - result.fetched - len(result.failures)} from {args.cache_dir}",
              file=sys.stderr)
    if result.failures:
        raise SystemExit("datasets missing (fetched ones stay cached; re-run resumes):\n  "
                         + "\n  ".join(result.failures))
    return ",".join(f.path for f in result.files)


def backfill(args: argparse.Namespace, beam_args: list[str]) -> dict[str, Any]:
    files = input_files(args)
    if args.download_only:
        return {"input": files}
    runner = PipelineOptions(beam_args).view_as(StandardOptions).runner or "DirectRunner"
    if args.output_dataset and runner.endswith("DirectRunner"):
        from pipelines.streaming_pipeline import prepare_bigquery

        prepare_bigquery(args.output_dataset,
                         PipelineOptions(beam_args).view_as(MarketDataOptions).bigquery_write_method)
    return run_bounded(BoundedRun(
        input_file=files, output_dir=args.output_dir, output_format=args.format,
        output_dataset=args.output_dataset, mode=args.mode, timeframes=args.timeframes,
        feature_timeframes=args.feature_timeframes, gap_candles=not args.no_gap_candles,
        idle_timeout_seconds=args.idle_timeout_seconds, start_time=args.from_date,
        end_time=args.to_date, checkpoint_dir=args.checkpoint_dir, workers=args.workers,
        progress=not args.quiet,
        merge_tables=(CANDLES_TABLE, DEAD_LETTER_TABLE), beam_args=beam_args))


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    summary = backfill(args, args.beam_args)
    if args.download_only:
        print(summary["input"].replace(",", "\n"))
        return 0
    print(f"✅ backfilled {summary['unique_ticks']:,} ticks from {summary['files']} files in "
          f"{summary['seconds']}s ({summary['ticks_per_second']:,} ticks/s, {args.workers} workers); "
          f"{summary['candle_rows']:,} candles, {summary['dead_letter_rows']:,} dead letters, "
          f"{summary['duplicate_ticks']:,} duplicates dropped")
    print("\n".join(format_per_day(summary)))
    if summary.get("output_dir"):
        print(f"   output: {summary['output_dir']} ({args.format})")
    return 0
