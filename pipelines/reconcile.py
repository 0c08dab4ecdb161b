"""``mds reconcile``: our candles against the venue's own klines, candle by candle, field by field.

    mds reconcile --exchange binance --symbol BTC-USDT --timeframe 1m --from 2024-03-01 --to 2024-03-02 \\
        --dataset PROJECT:market_data            # our candles: BigQuery's candles_latest
    mds reconcile ... --input-dir out/replay     # or an `mds replay` / `mds backfill` output

The venue's klines come from its public REST API (binance, binance-futures, coinbase, okx, bybit,
deribit; docs/reconcile.md), the symbol through the instrument table the ingest workers use.
One row per candle goes to the ``candle_reconciliation`` table (``--output-dataset``, default the
``--dataset`` read) and/or ``candle_reconciliation.jsonl`` (``--output-dir``, default the
``--input-dir`` read); the ``reconciliation_by_day`` view gives the match rate per day. Exit code:
0 when every candle with trades matches, 1 when one differs, 2 when the comparison could not run.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from ingest.message import iso_from_us, parse_time_us
from reconcile.compare import INVERSE_VOLUME_TOLERANCE, Market, Summary, compare_series, time_us
from reconcile.fetch import KlineClient, KlinesUnavailable, resolve
from reconcile.klines import venue_of
from transforms.candles import parse_timeframes
from transforms.schemas import CANDLES_TABLE, RECONCILIATION_TABLE
from transforms.sinks import finalize_row

INSERT_BATCH = 500  # rows per insertAll request (BigQuery's recommendation)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exchange", required=True, help="binance, binance-futures, coinbase, okx, bybit or deribit")
    parser.add_argument("--symbol", required=True, help="ours (BTC-USDT, BTC-USD-PERP) or the venue's (BTCUSDT)")
    parser.add_argument("--timeframe", default="1m", help="comma separated, e.g. 1m or 4h,24h (default 1m)")
    parser.add_argument("--from", dest="start", required=True, help="first candle open, YYYY-MM-DD or ISO-8601 UTC")
    parser.add_argument("--to", dest="end", required=True, help="end of the range (exclusive)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="read candles_latest of this BigQuery PROJECT:DATASET")
    source.add_argument("--input-dir", help="read the candles of an `mds replay`/`mds backfill` output")
    parser.add_argument("--output-dataset", help="write candle_reconciliation here (default: --dataset)")
    parser.add_argument("--output-dir", help="append candle_reconciliation.jsonl here (default: --input-dir)")
    parser.add_argument("--bigquery-endpoint", default=os.environ.get("BIGQUERY_EMULATOR_HOST"),
                        help="a local BigQuery API server (default $BIGQUERY_EMULATOR_HOST; unset: Google Cloud)")
    parser.add_argument("--endpoint", help="the venue's REST base URL instead of its public one (a proxy, a mock)")
    parser.add_argument("--attempts", type=int, default=4, help="tries per request before giving up (default 4)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    parser.add_argument("--quiet", action="store_true", help="no output; the exit code says")


# ------------------------------------------------------------------------------ our candles

def candle_files(input_dir: str) -> list[str]:
    """The candles of a bounded run's output: the merged file or its shards, JSONL or Parquet."""
    patterns = [f"{CANDLES_TABLE}.jsonl", f"{CANDLES_TABLE}.parquet", f"{CANDLES_TABLE}-*-of-*.jsonl",
                f"{CANDLES_TABLE}-*-of-*.parquet"]
    found = sorted(p for pattern in patterns for p in glob.glob(os.path.join(input_dir, pattern)))
    if not found:
        raise FileNotFoundError(f"no {CANDLES_TABLE}.jsonl/.parquet in {input_dir}: point --input-dir at "
                                "an `mds replay` or `mds backfill` output")
    return found


def _file_rows(path: str) -> Iterable[dict[str, Any]]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
        return
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from exc


def latest_per_candle(rows: Iterable[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """One row per open time: the newest job's highest revision (as ``candles_latest``)."""
    best: dict[int, dict[str, Any]] = {}
    for row in rows:
        opened = time_us(row["timestamp_in"])
        rank = (time_us(row["job_start"]) if row.get("job_start") else 0, int(row.get("revision") or 0))
        kept = best.get(opened)
        if kept is None or rank >= kept["_rank"]:
            best[opened] = dict(row, _rank=rank)
    return {opened: {k: v for k, v in row.items() if k != "_rank"} for opened, row in best.items()}


def candles_from_files(input_dir: str, exchange: str, symbol: str, timeframe: str,
                       start_us: int, end_us: int) -> list[dict[str, Any]]:
    rows = (r for path in candle_files(input_dir) for r in _file_rows(path)
            if r.get("exchange") == exchange and r.get("symbol") == symbol and r.get("timeframe") == timeframe
            and start_us <= time_us(r["timestamp_in"]) < end_us)
    return [row for _, row in sorted(latest_per_candle(rows).items())]


def candles_from_bigquery(client: Any, dataset_ref: str, exchange: str, symbol: str, timeframe: str,
                          start_us: int, end_us: int) -> list[dict[str, Any]]:
    """The latest revision of each candle, from ``candles_latest`` (one partition range scanned)."""
    from google.cloud import bigquery

    from transforms.bigquery import split_dataset_ref

    project, dataset = split_dataset_ref(dataset_ref)
    parameters = [bigquery.ScalarQueryParameter("exchange", "STRING", exchange),
                  bigquery.ScalarQueryParameter("symbol", "STRING", symbol),
                  bigquery.ScalarQueryParameter("timeframe", "STRING", timeframe),
                  bigquery.ScalarQueryParameter("start", "TIMESTAMP", iso_from_us(start_us)),
                  bigquery.ScalarQueryParameter("end", "TIMESTAMP", iso_from_us(end_us))]
    job = client.query(
        f"SELECT * FROM `{project}.{dataset}.candles_latest` WHERE exchange = @exchange AND "
        "symbol = @symbol AND timeframe = @timeframe AND timestamp_in >= @start AND timestamp_in < @end "
        "ORDER BY timestamp_in", job_config=bigquery.QueryJobConfig(query_parameters=parameters))
    return [dict(row.items()) for row in job.result()]


# ------------------------------------------------------------------------------ the run

def reconcile(args: argparse.Namespace, client: Any = None,
              kline_client: KlineClient | None = None) -> tuple[list[dict[str, Any]], list[Summary]]:
    """Compares every requested timeframe; returns the rows (µs times) and one summary each."""
    instrument = resolve(args.exchange, args.symbol)
    venue = venue_of(instrument.exchange)
    start_us, end_us = parse_time_us(args.start), parse_time_us(args.end)
    if end_us <= start_us:
        raise ValueError(f"--to {args.end} is not after --from {args.start}")
    owned = kline_client is None
    klines_client = kline_client or KlineClient(
        {venue.exchange: args.endpoint.rstrip("/")} if args.endpoint else None,
        timeout_s=args.timeout, attempts=args.attempts)
    source = f"bigquery:{args.dataset}" if args.dataset else f"files:{args.input_dir}"
    rows: list[dict[str, Any]] = []
    summaries = []
    try:
        for label, seconds in parse_timeframes(args.timeframe):
            market = Market(instrument.exchange, instrument.symbol, instrument.native, label,
                            venue.interval(seconds, label), venue.counts_our_trades,
                            INVERSE_VOLUME_TOLERANCE if instrument.kind == "inverse" else 0.0)
            if args.dataset:
                candles = candles_from_bigquery(client, args.dataset, instrument.exchange, instrument.symbol,
                                                label, start_us, end_us)
            else:
                candles = candles_from_files(args.input_dir, instrument.exchange, instrument.symbol,
                                             label, start_us, end_us)
            klines = klines_client.fetch(instrument, seconds, label, start_us, end_us)
            compared = compare_series(market, candles, klines, source)
            rows += compared
            summaries.append(Summary.of(market, compared))
    finally:
        if owned:
            klines_client.close()
    return rows, summaries


def write_jsonl(output_dir: str, rows: Sequence[dict[str, Any]]) -> str:
    path = os.path.join(output_dir, f"{RECONCILIATION_TABLE}.jsonl")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(finalize_row(row, RECONCILIATION_TABLE), separators=(",", ":")) + "\n")
    return path


def write_bigquery(client: Any, dataset_ref: str, rows: Sequence[dict[str, Any]]) -> None:
    """Creates the table and views if missing, then streams the rows; any refusal is an error."""
    from transforms.bigquery import ensure_tables, ensure_views, split_dataset_ref
    from transforms.bigquery_rows import row_problem

    ensure_tables(client, dataset_ref)
    ensure_views(client, dataset_ref)
    project, dataset = split_dataset_ref(dataset_ref)
    finished = [finalize_row(row, RECONCILIATION_TABLE) for row in rows]
    for row in finished:
        problem = row_problem(row, RECONCILIATION_TABLE)
        if problem:
            raise ValueError(f"reconciliation row refused before insert: {problem}")
    for first in range(0, len(finished), INSERT_BATCH):
        errors = client.insert_rows_json(f"{project}.{dataset}.{RECONCILIATION_TABLE}",
                                         finished[first:first + INSERT_BATCH])
        if errors:
            raise RuntimeError(f"BigQuery refused reconciliation rows: {errors[:3]}")


def main(argv: Sequence[str]) -> int:
    """``mds reconcile ARGV`` (the exit code)."""
    from pipelines.cli import parse_command

    return run_command(parse_command("reconcile", list(argv)))


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    from google.api_core.exceptions import GoogleAPIError

    output_dataset = args.output_dataset or args.dataset
    output_dir = args.output_dir or args.input_dir
    client = None
    try:
        if args.dataset or output_dataset:
            from transforms.bigquery import make_client, split_dataset_ref

            client = make_client(split_dataset_ref(args.dataset or output_dataset)[0], args.bigquery_endpoint)
        rows, summaries = reconcile(args, client)
        if output_dataset:
            write_bigquery(client, output_dataset, rows)
        path = write_jsonl(output_dir, rows) if output_dir else None
    except (KlinesUnavailable, ValueError, FileNotFoundError, RuntimeError, GoogleAPIError) as exc:
        print(f"mds reconcile: {exc}", file=sys.stderr)
        return 2
    finally:
        if client is not None:
            client.close()
    if not args.quiet:
        for summary in summaries:
            print(summary.line())
        written = [f"{output_dataset}.{RECONCILIATION_TABLE}" if output_dataset else None, path]
        print(f"   {len(rows)} rows → {', '.join(w for w in written if w)}")
    return 0 if all(s.matched == s.compared for s in summaries) else 1
