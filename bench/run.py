"""Throughput, latency and memory of every path, on ONE generated trading day, as one table.

1. numpy limit: vectorised OHLCV for every timeframe + ``compute_features`` over the same arrays
   (file load timed apart): what the hardware does without a framework.
2. ``mds replay``: the Beam pipeline (DirectRunner, batch) over the file, candles + features.
3. streaming: Pub/Sub emulator → ``mds run`` (DirectRunner) → local BigQuery API server, fed by
   ``mds ingest`` with a slice of the day re-stamped to now at each of ``--stream-rates`` (the DirectRunner's
   Pub/Sub watermark is the wall clock, see pipelines/demo.py), once per
   ``--bigquery-write-methods``; sustained ticks/s into BigQuery, ``latency_ms`` percentiles,
   and bytes per stored row as each method bills them (bench/bigquery_bytes.py).
4. ingest workers (Python ``mds ingest``, Node.js ``mds-ingest.js``) publishing the file into the
   emulator as fast as they can.
5. backfill: ``mds backfill`` over a month-like set of daily files per symbol
   (``bench.generate_month``), one worker vs the DirectRunner's multi-processing on every core,
   against numpy on the same files with their load included.
6. the BigQuery writers alone: ``--writer-ticks`` tick rows of the day through each of
   ``--bigquery-write-methods``' DoFn into a fresh local server (bench/bigquery_writers.py):
   rows/s and bytes per row.

Subprocesses are measured from outside: wall time, and peak RSS of the whole process tree
polled from /proc. Not a test: it prints figures.

    .venv/bin/python -m bench.run [--ticks 5000000] [--skip-streaming] [--stream-rates 20000,50000]
        [--stream-mode ticks] [--bigquery-write-methods STORAGE_WRITE_API,STREAMING_INSERTS]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from bench.generate_day import DEFAULT_SEED, DEFAULT_TICKS, ensure_day
from pipelines.local_names import DEFAULT_DATASET, LOCAL_PROJECT  # noqa: E402
from pipelines.options import DEFAULT_FEATURE_TIMEFRAMES, DEFAULT_TIMEFRAMES
from transforms.bigquery import WRITE_METHODS
from transforms.candles import parse_timeframes
from transforms.features import CANDLE_FIELDS, compute_features

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MDS = [PYTHON, "-m", "pipelines.cli"]
NODE_INGEST = ["node", str(REPO / "ingest" / "nodejs" / "bin" / "mds-ingest.js")]
PROJECT, DATASET = LOCAL_PROJECT, DEFAULT_DATASET
RSS_POLL_SECONDS = 0.2
BIGQUERY_POLL_SECONDS = 2.0


@dataclass
class Row:
    """One line of the table."""

    stage: str
    ticks: int
    seconds: float
    peak_rss_bytes: Optional[int]
    note: str = ""

    @property
    def ticks_per_second(self) -> float:
        return self.ticks / self.seconds if self.seconds > 0 else float("nan")


# ---------------------------------------------------------------------------- process measurement

def _tree_pids(root: int) -> list[int]:
    pids, queue = [], [root]
    while queue:
        pid = queue.pop()
        pids.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    queue.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return pids


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


class PeakRssMonitor(threading.Thread):
    """Polls the summed RSS of a process and its descendants; the peak is what a container limit
    would have to allow (the DirectRunner may fork workers, Node has helper threads)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self._pid = pid
        self._stopped = threading.Event()
        self.peak = 0

    def run(self) -> None:
        while not self._stopped.is_set():
            self.peak = max(self.peak, sum(_rss_bytes(pid) for pid in _tree_pids(self._pid)))
            self._stopped.wait(RSS_POLL_SECONDS)

    def stop(self) -> int:
        self._stopped.set()
        self.join()
        return self.peak


@dataclass
class Measured:
    seconds: float
    peak_rss_bytes: int
    output: str
    returncode: int
    cpu_seconds: float = 0.0  # user + system of the process and the descendants it waited for


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(command: list[str], env: Optional[dict[str, str]] = None, timeout: float = 7200) -> Measured:
    """Runs ``command`` to completion; wall time, CPU time, peak tree RSS and combined output."""
    started, cpu_before = time.perf_counter(), _children_cpu_seconds()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    monitor = PeakRssMonitor(process.pid)
    monitor.start()
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            from pipelines.emulators import terminate_group
            terminate_group(process)
        peak = monitor.stop()
    return Measured(time.perf_counter() - started, peak, output.decode(errors="replace"), process.returncode,
                    _children_cpu_seconds() - cpu_before)


def _checked(measured: Measured, what: str) -> Measured:
    if measured.returncode != 0:
        raise RuntimeError(f"{what} failed with exit code {measured.returncode}:\n{measured.output[-3000:]}")
    return measured


# --------------------------------------------------------------------------------- 1. numpy limit

@dataclass
class DayArrays:
    """The day as columns, one entry per symbol, each sorted by (timestamp, id) like the pipeline."""

    symbols: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    frame: Optional[pd.DataFrame] = None

    @property
    def ticks(self) -> int:
        return sum(len(columns["timestamp"]) for columns in self.symbols.values())


def load_day(path: str) -> DayArrays:
    frame = pd.read_csv(path, dtype={"exchange": "category", "symbol": "category", "side": "category",
                                     "timestamp": np.int64, "local_timestamp": np.int64,
                                     "id": np.int64, "price": np.float64, "amount": np.float64})
    day = DayArrays(frame=frame)
    for symbol, group in frame.groupby("symbol", observed=True, sort=True):
        order = np.lexsort((group["id"].to_numpy(), group["timestamp"].to_numpy()))
        day.symbols[str(symbol)] = {
            "timestamp": group["timestamp"].to_numpy()[order],
            "price": group["price"].to_numpy()[order],
            "amount": group["amount"].to_numpy()[order],
            "buy": (group["side"].to_numpy() == "buy")[order],
        }
    return day


def ohlcv(columns: dict[str, np.ndarray], timeframe_us: int, gap_fill: bool) -> dict[str, np.ndarray]:
    """Candles of one symbol and timeframe with reduceat over bucket boundaries; with ``gap_fill``
    the series is contiguous (empty buckets carry the previous close, volume 0), as features need."""
    price, amount = columns["price"], columns["amount"]
    bucket = columns["timestamp"] // timeframe_us
    starts = np.concatenate(([0], np.flatnonzero(np.diff(bucket)) + 1))
    ends = np.concatenate((starts[1:], [len(bucket)]))
    volume = np.add.reduceat(amount, starts)
    quote = np.add.reduceat(price * amount, starts)
    candles = {
        "start": bucket[starts], "open": price[starts], "high": np.maximum.reduceat(price, starts),
        "low": np.minimum.reduceat(price, starts), "close": price[ends - 1], "volume": volume,
        "quote_volume": quote, "trades": (ends - starts).astype(np.float64), "vwap": quote / volume,
        "buy_volume": np.add.reduceat(np.where(columns["buy"], amount, 0.0), starts),
    }
    if not gap_fill:
        return candles
    slots = candles["start"] - candles["start"][0]
    size = int(slots[-1]) + 1
    filled_from = np.maximum.accumulate(np.where(np.isin(np.arange(size), slots), np.arange(size), 0))
    position = np.zeros(size, dtype=np.int64)
    position[slots] = np.arange(len(slots))
    carried_close = candles["close"][position[filled_from]]
    dense: dict[str, np.ndarray] = {}
    for name in ("open", "high", "low", "close"):
        dense[name] = carried_close.copy()
        dense[name][slots] = candles[name]
    for name in ("volume", "quote_volume", "trades", "buy_volume"):
        dense[name] = np.zeros(size)
        dense[name][slots] = candles[name]
    dense["vwap"] = np.full(size, np.nan)
    dense["vwap"][slots] = candles["vwap"]
    dense["start"] = candles["start"][0] + np.arange(size)
    return dense


def numpy_limit(day: DayArrays, timeframes: str, feature_timeframes: str) -> tuple[float, dict[str, int]]:
    """Seconds for every timeframe's candles (+ features where configured) of every symbol, and
    the number of candles per timeframe (non-empty ones, to cross-check the pipeline)."""
    featured = {label for label, _ in parse_timeframes(feature_timeframes)}
    counts: Counter[str] = Counter()
    started = time.perf_counter()
    for columns in day.symbols.values():
        for label, seconds in parse_timeframes(timeframes):
            candles = ohlcv(columns, seconds * 1_000_000, gap_fill=label in featured)
            if label in featured:
                compute_features({name: candles[name] for name in CANDLE_FIELDS}, float(seconds))
            counts[label] += int(np.count_nonzero(candles["trades"]))
    return time.perf_counter() - started, dict(counts)


def exact_sums_cost(day: DayArrays) -> str:
    """What exact decimal volume sums cost against float sums, per 15 s batch as the pipeline
    forms them (transforms.exact.batch_sums vs np.sum/np.dot), on the day's own ticks."""
    from transforms.exact import batch_sums

    batches = []
    for columns in day.symbols.values():
        bucket = columns["timestamp"] // 15_000_000
        starts = np.flatnonzero(np.r_[True, np.diff(bucket) != 0, True])
        side = np.where(columns["buy"], 1, -1).astype(np.int8)
        batches += [(columns["price"][a:b], columns["amount"][a:b], side[a:b])
                    for a, b in zip(starts[:-1], starts[1:])]
    started = time.perf_counter()
    for price, amount, side in batches:
        float(amount.sum()), float(np.dot(price, amount)), float(amount[side == 1].sum()), float(amount[side == -1].sum())
    floats = time.perf_counter() - started
    started, hints = time.perf_counter(), (0, 0)
    for price, amount, side in batches:
        *_, amount_decimals, price_decimals = batch_sums(price, amount, side, hints)
        hints = (amount_decimals, price_decimals)
    exact = time.perf_counter() - started
    return (f"exact decimal sums: {exact:.2f}s vs float sums {floats:.2f}s over {len(batches):,} "
            f"15 s batches = +{(exact - floats) / day.ticks * 1e9:,.0f} ns per tick")


# ------------------------------------------------------------------------------------ 2. replay

def replay_row(path: str, out_dir: str, timeframes: str, feature_timeframes: str,
               expected_candles: dict[str, int], ticks: int) -> Row:
    command = MDS + ["replay", "--input", path, "--output-dir", out_dir, "--timeframes", timeframes,
                     "--feature-timeframes", feature_timeframes, "--quiet"]
    measured = _checked(run_measured(command), "mds replay")
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    with open(os.path.join(out_dir, "candles.jsonl"), encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            key = (row["symbol"], row["timeframe"], row["timestamp_in"])
            if key not in latest or row["revision"] >= latest[key]["revision"]:
                latest[key] = row
    got = Counter(key[1] for key, row in latest.items() if row["trades"])
    day_trades = sum(row["trades"] for key, row in latest.items() if key[1] == "24h")
    same = dict(got) == expected_candles and day_trades == ticks
    note = ("candles = numpy's" if same else
            f"MISMATCH: candles {dict(got)} vs numpy {expected_candles}, 24h trades {day_trades:,}")
    return Row("mds replay (DirectRunner batch)", ticks, measured.seconds, measured.peak_rss_bytes,
               f"{note}; incl. ~5 s Beam start-up")


# --------------------------------------------------------------------------------- 3. streaming

def restamped_slice(day: DayArrays, ticks: int, seconds: float, start_us: int, path: str) -> int:
    """The first ``ticks`` trades of the day, their event times compressed to ``seconds`` and
    shifted to start at ``start_us``, as a Tardis CSV (what ``mds ingest --speed 1`` paces)."""
    assert day.frame is not None
    part = day.frame.iloc[:ticks].copy()
    first = int(part["timestamp"].iloc[0])
    span = max(int(part["timestamp"].iloc[-1]) - first, 1)
    scale = seconds * 1e6 / span
    lag = part["local_timestamp"] - part["timestamp"]
    part["timestamp"] = start_us + ((part["timestamp"] - first) * scale).astype(np.int64)
    part["local_timestamp"] = part["timestamp"] + lag
    part.to_csv(path, index=False, lineterminator="\n")
    return len(part)


def _count(client: Any, table: str) -> int:
    return int(list(client.query(f"SELECT COUNT(*) AS n FROM `{PROJECT}.{DATASET}.{table}`").result())[0]["n"])


def _delivered(client: Any, mode: str, timeframe: str) -> int:
    """Ticks that reached BigQuery: rows of ``ticks``, or in candles mode the trades of the
    latest revision of every candle of the shortest timeframe."""
    if mode != "candles":
        return _count(client, "ticks")
    rows = list(client.query(f"SELECT SUM(trades) AS n FROM `{PROJECT}.{DATASET}.candles_latest` "
                             f"WHERE timeframe = '{timeframe}'").result())
    return int(rows[0]["n"] or 0)


def streaming_row(day: DayArrays, args: argparse.Namespace, work_dir: str, rate: float,
                  method: str) -> Row:
    from bench.bigquery_bytes import bytes_per_row
    from pipelines.demo import Heartbeat
    from pipelines.emulators import (
        BigQueryEmulator,
        PubSubEmulator,
        ensure_topic_and_subscription,
        pubsub_env,
        terminate_group,
    )
    from transforms.bigquery import make_client

    ticks = min(int(rate * args.stream_seconds), day.ticks)
    shortest = parse_timeframes(args.timeframes)[0][0]
    with PubSubEmulator() as pubsub, BigQueryEmulator() as bigquery, pubsub_env(pubsub.host):
        topic, subscription = ensure_topic_and_subscription(PROJECT, "ticks", "ticks-sub")
        env = dict(os.environ, PUBSUB_EMULATOR_HOST=pubsub.host, GOOGLE_CLOUD_PROJECT=PROJECT,
                   **bigquery.client_env())
        log = open(os.path.join(work_dir, "streaming_pipeline.log"), "wb")
        pipeline = subprocess.Popen(
            MDS + ["run", "--runner=BundleBasedDirectRunner", f"--input_subscription={subscription}",
                   f"--output_dataset={PROJECT}:{DATASET}", f"--mode={args.stream_mode}",
                   f"--timeframes={args.timeframes}", f"--feature_timeframes={args.feature_timeframes}",
                   f"--allowed_lateness_seconds={args.allowed_lateness_seconds}",
                   f"--bigquery_write_method={method}",
                   "--early_firing_seconds=10", "--idle_timeout_seconds=120",
                   f"--local_journal_dir={os.path.join(work_dir, f'journal-{rate:g}-{method}')}"],
            cwd=REPO, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        monitor = PeakRssMonitor(pipeline.pid)
        monitor.start()
        heartbeat = Heartbeat(topic)
        ingest = None
        try:
            client = make_client(PROJECT, bigquery.endpoint)
            deadline = time.monotonic() + 90
            while not _tables_ready(client):
                if pipeline.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the streaming pipeline did not start; see {log.name}")
                time.sleep(1)
            heartbeat.start()
            time.sleep(8)  # the DirectRunner pulls a few seconds after it built the graph
            source = os.path.join(work_dir, "stream_slice.csv")
            published = restamped_slice(day, ticks, args.stream_seconds, time.time_ns() // 1000 + 2_000_000, source)
            ingest = subprocess.Popen(MDS + ["ingest", "--source", source, "--speed", "1", "--topic", topic,
                                             "--batch-size", str(args.stream_batch_size), "--batch-latency-ms",
                                             str(args.stream_batch_latency_ms), "--quiet"],
                                      cwd=REPO, env=env, start_new_session=True, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            ingest_output = ingest.communicate(timeout=args.stream_seconds * 4 + 120)[0]
            drain_deadline = time.monotonic() + args.stream_drain_seconds
            delivered = 0
            while time.monotonic() < drain_deadline and delivered < published:
                time.sleep(BIGQUERY_POLL_SECONDS)
                delivered = _delivered(client, args.stream_mode, shortest)
            dead = {row["stage"]: int(row["n"]) for row in client.query(
                f"SELECT stage, COUNT(*) AS n FROM `{PROJECT}.{DATASET}.dead_letter` GROUP BY stage").result()}
            latency_sql = (f"SELECT latency_ms FROM `{PROJECT}.{DATASET}.candles` WHERE is_final "
                           f"AND latency_ms IS NOT NULL" if args.stream_mode == "candles" else
                           f"SELECT latency_ms FROM `{PROJECT}.{DATASET}.ticks_unique`")
            latency = np.array([r["latency_ms"] for r in client.query(latency_sql).result()],
                               dtype=np.float64)
            sizes = bytes_per_row(client, PROJECT, DATASET,
                                  "candles" if args.stream_mode == "candles" else "ticks")
        finally:
            heartbeat.stop()
            for process in (ingest, pipeline):
                if process is not None and process.poll() is None:
                    terminate_group(process)
            peak = monitor.stop()
            log.close()
    match = _PY_SUMMARY.search(ingest_output)
    if not match:
        raise RuntimeError(f"streaming ingest: no summary line in its output:\n{ingest_output[-2000:]}")
    publish_seconds = float(match.group(2))
    p50, p95, p99 = np.percentile(latency, [50, 95, 99]) if latency.size else (np.nan,) * 3
    kept_up = delivered == published and publish_seconds <= args.stream_seconds * 1.1
    billed = (f"{sizes['insertall_billed']:,.0f} B billed (≥1 KB rule), ${sizes['insertall_usd_per_million']:.4f}"
              if method == "STREAMING_INSERTS" else
              f"{sizes['proto']:,.1f} B proto, ${sizes['storage_write_usd_per_million']:.4f}") if sizes else "-"
    note = (f"{method}, mode {args.stream_mode}; offered {published / args.stream_seconds:,.0f}/s for "
            f"{args.stream_seconds:g}s, published in {publish_seconds:.1f}s "
            f"({args.stream_batch_size} ticks/message max); {delivered:,}/{published:,} ticks in BigQuery "
            f"{'(kept up)' if kept_up else '(FELL BEHIND)'}, dead letters {dead or 0}; "
            f"{'final candle' if args.stream_mode == 'candles' else 'tick'} latency_ms "
            f"p50={p50:,.0f} p95={p95:,.0f} p99={p99:,.0f} (n={latency.size:,}); per row: "
            f"{sizes.get('logical', 0):,.1f} B logical, {billed} per million rows")
    label = "SWA" if method == "STORAGE_WRITE_API" else "insertAll"
    return Row(f"streaming {rate / 1000:g}k/s offered → BQ {label}", delivered, publish_seconds, peak, note)


def _tables_ready(client: Any) -> bool:
    try:
        _count(client, "candles")
        return True
    except Exception:  # noqa: BLE001 - not created yet is any of NotFound/BadRequest here
        return False


# ------------------------------------------------------------------------------------ 4. ingest

_PY_SUMMARY = re.compile(r"published ([\d,]+) ticks .* in ([\d.]+)s = ([\d,]+) ticks/s")
_NODE_SUMMARY = re.compile(r"ingest summary: ([\d,]+) ticks .* ([\d,]+) ticks/s over ([\d.]+) s")


def ingest_rows(path: str, args: argparse.Namespace) -> list[Row]:
    from pipelines.emulators import (
        PubSubEmulator,
        ensure_topic_and_subscription,
        pubsub_env,
    )

    common = ["--source", path, "--create-topic", "--quiet", "--project", PROJECT,
              "--batch-size", str(args.batch_size), "--duration", str(args.ingest_seconds)]
    rows = []
    with PubSubEmulator() as pubsub, pubsub_env(pubsub.host):
        env = dict(os.environ, PUBSUB_EMULATOR_HOST=pubsub.host, METADATA_SERVER_DETECTION="none")
        for name, command, pattern in (
                ("ingest: Python mds ingest", MDS + ["ingest", "--topic", "bench-python"] + common, _PY_SUMMARY),
                ("ingest: Node.js mds-ingest.js", NODE_INGEST + ["--topic", "bench-node"] + common, _NODE_SUMMARY)):
            ensure_topic_and_subscription(PROJECT, command[command.index("--topic") + 1])
            measured = _checked(run_measured(command, env=env), name)
            match = pattern.search(measured.output)
            if not match:
                raise RuntimeError(f"{name}: no summary line in its output:\n{measured.output[-2000:]}")
            published = int(match.group(1).replace(",", ""))
            own_seconds = float(match.group(2) if pattern is _PY_SUMMARY else match.group(3))
            rows.append(Row(name, published, own_seconds, measured.peak_rss_bytes,
                            f"batch {args.batch_size}; its own clock (process wall {measured.seconds:.1f}s)"))
    return rows


# ---------------------------------------------------------------------------------- 5. backfill

_BACKFILL_SUMMARY = re.compile(r"backfilled ([\d,]+) ticks from (\d+) files in ([\d.]+)s")


def numpy_with_load(paths: list[str], timeframes: str, feature_timeframes: str
                    ) -> tuple[float, int, dict[str, int]]:
    """Seconds to load every file (pandas read_csv) and compute what the pipeline computes, one
    series per symbol across the files; ticks; non-empty candles per timeframe."""
    started, cpu_started = time.perf_counter(), time.process_time()
    days = [load_day(path) for path in paths]
    month = DayArrays()
    for symbol in sorted({s for day in days for s in day.symbols}):
        parts = [day.symbols[symbol] for day in days if symbol in day.symbols]
        month.symbols[symbol] = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    _, counts = numpy_limit(month, timeframes, feature_timeframes)
    print(f"numpy incl. load: {time.process_time() - cpu_started:.1f} CPU-s", flush=True)
    return time.perf_counter() - started, month.ticks, counts


def backfill_rows(args: argparse.Namespace) -> list[Row]:
    """numpy with load, then ``mds backfill`` with 1 worker and with every core, same files."""
    from bench.generate_month import FIRST_DAY, ensure_month

    directory, paths = ensure_month(args.backfill_days, args.backfill_ticks_per_day, args.seed)
    limit_seconds, ticks, expected = numpy_with_load(paths, args.timeframes, args.feature_timeframes)
    rows = [Row(f"numpy incl. load: {len(paths)} files", ticks, limit_seconds,
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "pandas read_csv per file + OHLCV all TFs + features, one core")]
    last_day = FIRST_DAY.fromordinal(FIRST_DAY.toordinal() + args.backfill_days)
    per_worker: dict[int, float] = {}
    for workers in sorted({1, os.cpu_count() or 1}):
        out_dir = os.path.join(args.work_dir, f"backfill_{workers}w")
        command = MDS + ["backfill", "--input", os.path.join(directory, "*.csv.gz"),
                         "--from", FIRST_DAY.isoformat(), "--to", last_day.isoformat(),
                         "--timeframes", args.timeframes, "--feature-timeframes", args.feature_timeframes,
                         "--workers", str(workers), "--output-dir", out_dir, "--quiet"]
        measured = _checked(run_measured(command), f"mds backfill --workers {workers}")
        match = _BACKFILL_SUMMARY.search(measured.output)
        if not match or int(match.group(1).replace(",", "")) != ticks:
            raise RuntimeError(f"backfill --workers {workers}: ticks differ from the files:\n{measured.output[-2000:]}")
        got = Counter()
        with open(os.path.join(out_dir, "candles.jsonl"), encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                got[row["timeframe"]] += bool(row["trades"])
        same = dict(got) == expected
        per_worker[workers] = measured.seconds
        speedup = per_worker[1] / measured.seconds
        # CPU seconds say what a core does whatever else the shared machine runs meanwhile
        rows.append(Row(f"mds backfill, {workers} worker{'s' if workers > 1 else ''}", ticks,
                        measured.seconds, measured.peak_rss_bytes,
                        f"{'candles = numpy' if same else f'MISMATCH {dict(got)} vs {expected}'}; "
                        f"{ticks / measured.seconds / workers:,.0f} ticks/s per core (wall), "
                        f"{ticks / measured.cpu_seconds:,.0f} per CPU-second ({measured.cpu_seconds:,.0f} "
                        f"CPU-s); {speedup:.2f}× of 1 worker; {measured.seconds / limit_seconds:.1f}× "
                        f"numpy incl. load"))


# --------------------------------------------------------------------------- 6. BigQuery writers

def writer_rows(day: DayArrays, args: argparse.Namespace) -> list[Row]:
    from bench.bigquery_writers import measure_writer, tick_batches

    batches = tick_batches(day.frame, min(args.writer_ticks, day.ticks))
    ticks = sum(len(batch) for batch in batches)
    rows = []
    for method in args.bigquery_write_methods:
        got = measure_writer(batches, method, PROJECT, DATASET)
        sizes = got["sizes"]
        billed = (f"{sizes['insertall_billed']:,.0f} B billed (≥1 KB), ${sizes['insertall_usd_per_million']:.4f}"
                  if method == "STREAMING_INSERTS" else
                  f"{sizes['proto']:,.1f} B proto, ${sizes['storage_write_usd_per_million']:.4f}")
        rows.append(Row(f"BQ writer alone: {method}", got["stored"], got["seconds"], None,
                        f"{got['stored']:,}/{ticks:,} tick rows stored, {got['failed']} dead letters, "
                        f"one bundle per 2,000-row batch; per row "
                        f"{sizes['logical']:,.1f} B logical, {billed} per million rows"))
        print(f"writer {method}: {rows[-1].ticks_per_second:,.0f} rows/s", flush=True)
    return rows


# ------------------------------------------------------------------------------------- the table

def print_table(rows: list[Row], limit_tps: float, command: str, extra: list[str]) -> None:
    print()
    print(f"$ {command}")
    print(f"{'stage':<42} {'ticks':>11} {'seconds':>9} {'ticks/s':>11} {'÷ numpy':>9} {'peak RSS':>9}  note")
    for row in rows:
        rss = f"{row.peak_rss_bytes / 2**20:,.0f} MB" if row.peak_rss_bytes else "-"
        ratio = limit_tps / row.ticks_per_second if row.ticks_per_second > 0 else float("nan")
        print(f"{row.stage:<42} {row.ticks:>11,} {row.seconds:>9.2f} {row.ticks_per_second:>11,.0f} "
              f"{ratio:>8,.0f}× {rss:>9}  {row.note}")
    for line in extra:
        print(line)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=DEFAULT_TICKS, help="ticks in the generated day")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--input", help="an existing Tardis trades CSV(.gz) instead of a generated day")
    parser.add_argument("--timeframes", default=DEFAULT_TIMEFRAMES)
    parser.add_argument("--feature-timeframes", default=DEFAULT_FEATURE_TIMEFRAMES)
    parser.add_argument("--work-dir", default="out/bench")
    parser.add_argument("--skip-replay", action="store_true")
    parser.add_argument("--skip-streaming", action="store_true")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-backfill", action="store_true")
    parser.add_argument("--backfill-days", type=int, default=10, help="daily files per symbol (3 symbols)")
    parser.add_argument("--backfill-ticks-per-day", type=int, default=3_000_000,
                        help="ticks per day of the backfill set, over the 3 symbols")
    parser.add_argument("--skip-writers", action="store_true")
    parser.add_argument("--writer-ticks", type=int, default=200_000,
                        help="tick rows each BigQuery write method writes alone (stage 6)")
    parser.add_argument("--stream-seconds", type=float, default=60.0, help="how long the stream publishes")
    parser.add_argument("--stream-rates", type=lambda text: [float(r) for r in text.split(",")],
                        default=[20_000.0, 50_000.0],
                        help="offered ticks/s, comma-separated: one streaming run (and row) each")
    parser.add_argument("--stream-drain-seconds", type=float, default=75.0,
                        help="after publishing, how long to wait for the last 1m windows and rows")
    parser.add_argument("--stream-batch-latency-ms", type=int, default=200,
                        help="the streaming publisher's max batch age (fewer, bigger messages when higher)")
    parser.add_argument("--stream-batch-size", type=int, default=2000,
                        help="the streaming publisher's max ticks per message (the DirectRunner pulls 10 "
                             "messages at a time into a 4 MB gRPC response: keep messages under ~400 KB)")
    parser.add_argument("--stream-mode", choices=("candles", "ticks", "both"), default="candles",
                        help="what the streaming job writes (candles: the default job)")
    parser.add_argument("--bigquery-write-methods", type=lambda text: text.split(","),
                        default=list(WRITE_METHODS),
                        help="comma-separated --bigquery_write_method values: one streaming run "
                             "(and row) each, per rate")
    parser.add_argument("--allowed-lateness-seconds", type=int, default=30)
    parser.add_argument("--ingest-seconds", type=float, default=30.0,
                        help="each ingest worker publishes the day for at most this long")
    parser.add_argument("--batch-size", type=int, default=500, help="ticks per Pub/Sub message (ingest)")
    args = parser.parse_args(argv)
    if args.ticks <= 0 or args.stream_seconds <= 0 or min(args.stream_rates) <= 0 or args.ingest_seconds <= 0:
        parser.error("--ticks, --stream-seconds, --stream-rates and --ingest-seconds must be > 0")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    os.chdir(REPO)
    os.makedirs(args.work_dir, exist_ok=True)
    command = shlex.join([os.path.relpath(PYTHON, REPO), "-m", "bench.run"] + argv)

    started = time.perf_counter()
    path = args.input or ensure_day(args.ticks, args.seed)
    generated = time.perf_counter() - started
    started = time.perf_counter()
    day = load_day(path)
    load_seconds = time.perf_counter() - started
    limit_seconds, candle_counts = numpy_limit(day, args.timeframes, args.feature_timeframes)
    limit_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = [Row("numpy limit: OHLCV all TFs + features", day.ticks, limit_seconds, limit_rss,
                f"this process, load incl.; {', '.join(f'{k} {v:,}' for k, v in candle_counts.items())} candles")]
    print(f"day: {path} ({day.ticks:,} ticks, {len(day.symbols)} symbols); prepared in {generated:.1f}s, "
          f"loaded (pandas read_csv + sort) in {load_seconds:.1f}s = {day.ticks / load_seconds:,.0f} ticks/s",
          flush=True)
    print(f"numpy limit: {limit_seconds:.2f}s = {day.ticks / limit_seconds:,.0f} ticks/s", flush=True)
    exact_line = exact_sums_cost(day)
    print(exact_line, flush=True)

    if not args.skip_replay:
        rows.append(replay_row(path, os.path.join(args.work_dir, "replay"), args.timeframes,
                               args.feature_timeframes, candle_counts, day.ticks))
        print(f"replay: {rows[-1].seconds:.1f}s", flush=True)
    if not args.skip_streaming:
        for rate in args.stream_rates:
            for method in args.bigquery_write_methods:
                rows.append(streaming_row(day, args, args.work_dir, rate, method))
                print(f"streaming: {rows[-1].note}", flush=True)
    if not args.skip_writers:
        rows.extend(writer_rows(day, args))
    if not args.skip_ingest:
        rows.extend(ingest_rows(path, args))
    if not args.skip_backfill:
        rows.extend(backfill_rows(args))
        print(f"backfill: {rows[-1].note}", flush=True)
    print_table(rows, rows[0].ticks_per_second, command,
                [f"load of the CSV.gz (not in the numpy row): {load_seconds:.2f}s; machine: "
                 f"{os.cpu_count()} cores, {os.getloadavg()[0]:.1f} load avg at the end", exact_line])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
