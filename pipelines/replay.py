"""``mds replay``: trade files through the full pipeline on the DirectRunner, no cloud needed.

One file (by default the bundled Binance day), a glob or a comma-separated list; the output is
one sorted file per table. ``mds backfill`` is the same run over a range of days and symbols.
Event time is exact here (a bounded source holds the watermark until the input is read), which
is why history is replayed this way locally rather than through the Pub/Sub emulator, whose
DirectRunner source puts the watermark at wall-clock time (docs/local-stack.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipelines.bounded_run import BoundedRun, run_bounded
from pipelines.options import (DEFAULT_FEATURE_TIMEFRAMES, DEFAULT_TIMEFRAMES, MODES,
                               OUTPUT_FORMATS)
from transforms.bigquery import STORAGE_WRITE_API, WRITE_METHODS

SAMPLE = str(Path(__file__).resolve().parent / "sample" / "binance_trades_2017-08-17_BTCUSDT.csv.gz")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The arguments of ``mds replay ARGV`` (as the ``mds`` tree parses them)."""
    from pipelines.cli import parse_command

    return parse_command("replay", argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=SAMPLE,
                        help="JSONL(.gz) of ticks, Tardis trades CSV(.gz) or Binance trades CSV: a "
                             "path, a glob or a comma-separated list (default: the bundled Binance "
                             "BTCUSDT 2017-08-17 sample)")
    parser.add_argument("--output-dir", default="out/replay", help="where the output files go")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="jsonl", help="output file format")
    parser.add_argument("--mode", choices=MODES, default="candles")
    parser.add_argument("--timeframes", default=DEFAULT_TIMEFRAMES)
    parser.add_argument("--feature-timeframes", default=DEFAULT_FEATURE_TIMEFRAMES)
    parser.add_argument("--no-gap-candles", action="store_true", help="no fill bars for empty intervals")
    parser.add_argument("--idle-timeout-seconds", type=int, default=3600,
                        help="gap candles stop this long after a key's last trade")
    parser.add_argument("--start-time", help="start of the requested range (ISO-8601 UTC or YYYY-MM-DD); "
                                             "earlier ticks are dead-lettered")
    parser.add_argument("--end-time", help="end of the requested range (exclusive): later ticks are "
                                           "dead-lettered, gap candles stop there (default: at each "
                                           "series' last trade)")
    parser.add_argument("--workers", type=int, default=1,
                        help="DirectRunner worker processes (files are spread over them)")
    parser.add_argument("--console-timeframes", default="1m",
                        help="timeframes printed as seed-style lines while running")
    parser.add_argument("--output-dataset", default=None,
                        help="also write to this BigQuery dataset, PROJECT:DATASET, all at once at "
                             "the end of the run (locally: the variables `mds stack up` prints)")
    parser.add_argument("--bigquery-write-method", choices=WRITE_METHODS, default=STORAGE_WRITE_API)
    parser.add_argument("--quiet", action="store_true", help="no console lines, no progress bar")


def replay(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the replay and returns a summary (rows per table, ticks, throughput)."""
    console = None if args.quiet else {t.strip() for t in args.console_timeframes.split(",") if t.strip()}
    if args.output_dataset:
        from pipelines.streaming_pipeline import prepare_bigquery

        prepare_bigquery(args.output_dataset, args.bigquery_write_method)
    return run_bounded(BoundedRun(
        input_file=args.input, output_dir=args.output_dir, output_format=args.format,
        output_dataset=args.output_dataset, bigquery_write_method=args.bigquery_write_method,
        mode=args.mode, timeframes=args.timeframes, feature_timeframes=args.feature_timeframes,
        gap_candles=not args.no_gap_candles, idle_timeout_seconds=args.idle_timeout_seconds,
        start_time=args.start_time, end_time=args.end_time, workers=args.workers, progress=not args.quiet, console_timeframes=console))


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    summary = replay(args)
    if not args.quiet:
        print(f"✅ replayed {summary['unique_ticks']:,} ticks in {summary['seconds']}s "
              f"({summary['ticks_per_second']:,} ticks/s on the DirectRunner)")
        print(f"   candles: {summary.get('candles_per_timeframe', {})}  dead letters: "
              f"{summary['dead_letter_rows']}  duplicates dropped: {summary['duplicate_ticks']}")
        suffix = f".{args.format}"
        print(f"   output: {summary['output_dir']}/candles{suffix}, dead_letter{suffix}")
    return 0
