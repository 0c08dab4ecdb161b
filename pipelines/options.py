"""Every option of the market-data pipeline, in one PipelineOptions subclass.

The argument names are the Flex Template parameters in ``templates/metadata.json`` (a test keeps
the two in step), so a job launched from the template and one launched from the shell read the
same flags. Booleans take an explicit value (``--gap_candles=false``) because Flex Templates pass
every parameter as ``--name=value``.
"""
from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.bigquery import STORAGE_WRITE_API, WRITE_METHODS

MODES = ("ticks", "candles", "both")
OUTPUT_FORMATS = ("jsonl", "parquet")
DEFAULT_TIMEFRAMES = "15s,1m,5m,15m,4h,24h"
DEFAULT_FEATURE_TIMEFRAMES = "15s,1m"


def str2bool(value: str | bool) -> bool:
    """Parse a template-style boolean ("true"/"false", "1"/"0", "yes"/"no")."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "y"):
        return True
    if lowered in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


class MarketDataOptions(PipelineOptions):
    """Options of the tick → candles → BigQuery pipeline (streaming on Pub/Sub, or file replay)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--mode", choices=MODES, default="candles",
                            help="ticks: raw ticks to BigQuery; candles: OHLCV + features; both.")
        parser.add_argument("--input_subscription", default=None,
                            help="Pub/Sub subscription to read ticks from: "
                                 "projects/PROJECT/subscriptions/NAME.")
        parser.add_argument("--input_file", default=None,
                            help="Read trade files instead of Pub/Sub (bounded, batch): a path, a "
                                 "glob or a comma-separated list of them, local or gs://; JSONL(.gz) "
                                 "of ticks, Tardis trades CSV(.gz) or Binance trades CSV. Files are "
                                 "read in parallel, one per worker at a time.")
        parser.add_argument("--start_time", default=None,
                            help="Bounded runs: start of the requested range (ISO-8601 UTC or "
                                 "YYYY-MM-DD, inclusive); earlier ticks go to dead_letter.")
        parser.add_argument("--end_time", default=None,
                            help="Bounded runs: end of the requested range (exclusive); later ticks "
                                 "go to dead_letter and gap candles stop there. Without it they "
                                 "stop at each series' last trade.")
        parser.add_argument("--checkpoint_dir", default=None,
                            help="Series checkpoints (local or gs://): a bounded run with "
                                 "--end_time writes where each series ended, a streaming job "
                                 "continues those series (gaps, features) from there.")
        parser.add_argument("--output_dataset", default=None,
                            help="BigQuery dataset for ticks/candles/dead_letter: PROJECT:DATASET.")
        parser.add_argument("--bigquery_write_method", choices=WRITE_METHODS,
                            default=STORAGE_WRITE_API,
                            help="How rows reach BigQuery: STORAGE_WRITE_API (default stream when "
                                 "streaming, PENDING streams committed at the end of a bounded "
                                 "run) or STREAMING_INSERTS (legacy insertAll).")
        parser.add_argument("--output_dir", default=None,
                            help="Write candles.jsonl / ticks.jsonl / dead_letter.jsonl here "
                                 "instead of (or as well as) BigQuery.")
        parser.add_argument("--output_format", choices=OUTPUT_FORMATS, default="jsonl",
                            help="File format under --output_dir: jsonl, or parquet (bounded runs; "
                                 "pandas, polars, DuckDB read it).")
        parser.add_argument("--output_topic", default=None,
                            help="Optional Pub/Sub topic for finished candles as JSON: "
                                 "projects/PROJECT/topics/NAME.")
        parser.add_argument("--timeframes", default=DEFAULT_TIMEFRAMES,
                            help="Candle timeframes, comma separated (each divides 24h).")
        parser.add_argument("--feature_timeframes", default=DEFAULT_FEATURE_TIMEFRAMES,
                            help="Timeframes that get HFT features, comma separated.")
        parser.add_argument("--allowed_lateness_seconds", type=int, default=60,
                            help="Event-time lateness after a window closes that still corrects "
                                 "its candle (revision+1); later ticks go to dead_letter.")
        parser.add_argument("--early_firing_seconds", type=int, default=60,
                            help="Processing-time cadence of provisional (is_final=false) panes "
                                 "for 4h and 24h candles; 0 disables them.")
        parser.add_argument("--dedup_retention_seconds", type=int, default=3600,
                            help="How long (event time) a market remembers the trade ids it let "
                                 "through: a repeated id within it is dropped as a duplicate.")
        parser.add_argument("--gap_candles", type=str2bool, default=True,
                            help="Emit gap candles (O=H=L=C=previous close, volume 0) for empty "
                                 "intervals after a key's first trade.")
        parser.add_argument("--idle_timeout_seconds", type=int, default=3600,
                            help="A key silent this long stops gap filling and has its state "
                                 "cleared.")
        parser.add_argument("--max_future_seconds", type=int, default=86400,
                            help="Ticks stamped further than this into the future are rejected.")
        parser.add_argument("--console", type=str2bool, default=False,
                            help="Print seed-style console lines for candles/ticks as they are "
                                 "produced (local runs).")
