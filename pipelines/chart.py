"""``mds chart``: candlesticks + volume + feature overlays for one symbol/timeframe, from a replay
output directory (``candles.jsonl``) or BigQuery, as PNG (matplotlib) or one self-contained HTML
file."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipelines.candle_rows import parse_utc, read_candles_jsonl, select_series
from pipelines.chart_render import CHARTABLE_COLUMNS, render_html, render_png
from transforms.schemas import CANDLES_TABLE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--symbol", required=True, help="e.g. BTC-USDT")
    parser.add_argument("--timeframe", required=True, help="e.g. 1m")
    parser.add_argument("--exchange", default=None, help="Needed when several exchanges carry the symbol.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input-dir", default=None, help="An `mds replay` output dir (reads candles.jsonl).")
    source.add_argument("--dataset", default=None, help="BigQuery PROJECT:DATASET to read the candles table from.")
    parser.add_argument("--features", default="", help=f"Overlays, comma separated: {', '.join(CHARTABLE_COLUMNS)}")
    parser.add_argument("--last", type=int, default=300, help="Chart the last N candles (0: all).")
    parser.add_argument("--out", required=True, help="chart.png or chart.html")
    parser.add_argument("--bigquery-endpoint", default=None,
                        help="BigQuery emulator URL for --dataset (default $BIGQUERY_EMULATOR_HOST; "
                             "unset: Google Cloud).")


def load_chart_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.input_dir:
        rows: Sequence[Mapping[str, Any]] = read_candles_jsonl(Path(args.input_dir))
    else:
        endpoint = args.bigquery_endpoint or os.environ.get("BIGQUERY_EMULATOR_HOST")
        rows = query_candles(args.dataset, endpoint, args.symbol, args.timeframe, args.exchange)
    series = select_series(rows, args.symbol, args.timeframe, args.exchange)
    if not series:
        source = args.input_dir or args.dataset
        raise ValueError(f"no {args.symbol} {args.timeframe} candles in {source}")
    return series[-args.last:] if args.last else series


def query_candles(dataset_ref: str, endpoint: str | None, symbol: str, timeframe: str,
                  exchange: str | None) -> list[dict[str, Any]]:
    """Every row (all revisions) of one symbol/timeframe from the candles table."""
    from google.cloud import bigquery

    from transforms.bigquery import make_client, split_dataset_ref

    project, dataset = split_dataset_ref(dataset_ref)
    client = make_client(project, endpoint)
    try:
        where = "symbol = @symbol AND timeframe = @timeframe" + (" AND exchange = @exchange" if exchange else "")
        parameters = [bigquery.ScalarQueryParameter("symbol", "STRING", symbol),
                      bigquery.ScalarQueryParameter("timeframe", "STRING", timeframe)]
        if exchange:
            parameters.append(bigquery.ScalarQueryParameter("exchange", "STRING", exchange))
        job = client.query(f"SELECT * FROM `{project}.{dataset}.{CANDLES_TABLE}` WHERE {where}",
                           job_config=bigquery.QueryJobConfig(query_parameters=parameters))
        return [dict(row.items()) for row in job.result()]
    finally:
        client.close()


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    features = [f.strip() for f in (args.features or "").split(",") if f.strip()]
    unknown = [f for f in features if f not in CHARTABLE_COLUMNS]
    if unknown:
        raise SystemExit(f"unknown feature(s) {unknown}; choose from {', '.join(CHARTABLE_COLUMNS)}")
    target = Path(args.out)
    if target.suffix.lower() not in (".png", ".html"):
        raise SystemExit("--out must end in .png or .html")
    try:
        candles = load_chart_rows(args)
    except (FileNotFoundError, ValueError) as exc:  # no such output, bad lines, several exchanges
        print(f"mds chart: {exc}", file=sys.stderr)
        return 2
    exchange = candles[0].get("exchange") or "?"
    title = (f"{args.symbol} {args.timeframe} ({exchange}) · {len(candles)} candles · "
             f"{parse_utc(candles[0]['timestamp_in']):%Y-%m-%d %H:%M} → "
             f"{parse_utc(candles[-1]['timestamp_in']):%Y-%m-%d %H:%M} UTC")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix.lower() == ".png":
        render_png(candles, features, title, target)
    else:
        render_html(candles, features, title, target)
    args.console.write(f"wrote {target} ({len(candles)} candles)\n")
    return 0
