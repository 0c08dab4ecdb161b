"""``mds demo``: the whole streaming chain on one machine, stopping by itself.

Pub/Sub emulator + local BigQuery API server on loopback → the Python ingest worker publishes the
bundled Binance day → the streaming pipeline (DirectRunner) reads Pub/Sub in event time and
appends ticks, candles and dead letters to BigQuery through the Storage Write API (the server's
gRPC port) → the analytics views are queried.

The DirectRunner's Pub/Sub source sets the watermark to wall-clock time (docs/local-stack.md), so
historical ticks would all arrive "late". The demo therefore replays the day compressed
``--speed`` times with event times re-stamped to now (a 4h window of the day passes in seconds).
Exact historical candles come from ``mds replay``; on Dataflow the Pub/Sub watermark follows the
``ts`` attribute and real history streams as it is.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

from ingest.files import iter_ticks
from ingest.message import iso_from_us, parse_time_us
from pipelines.emulators import (BigQueryEmulator, PubSubEmulator, ensure_topic_and_subscription,
                                 pubsub_env, terminate_group)
from pipelines.local_names import (DEFAULT_DATASET, LOCAL_PROJECT, TICKS_SUBSCRIPTION, TICKS_TOPIC)
from pipelines.replay import SAMPLE
from transforms.bigquery import ensure_tables, ensure_views, make_client

PROJECT, DATASET = LOCAL_PROJECT, DEFAULT_DATASET


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default=SAMPLE, help="trades file to publish (default: bundled day)")
    parser.add_argument("--speed", type=float, default=600.0,
                        help="replay this many times faster than the market (event times re-stamped)")
    parser.add_argument("--duration", type=float, default=120.0,
                        help="stop publishing after this many seconds (the file may end sooner)")
    parser.add_argument("--mode", choices=("ticks", "candles", "both"), default="both")
    parser.add_argument("--drain-seconds", type=float, default=65.0,
                        help="after publishing, wait this long for the last 1m windows to close")
    parser.add_argument("--allowed-lateness-seconds", type=int, default=30)


def restamp(source: str, target: str, speed: float, start_us: int) -> int:
    """Writes the ticks of ``source`` as JSONL with event times compressed ``speed`` times and
    shifted so the first tick happens at ``start_us``. Returns the tick count."""
    ticks = list(iter_ticks(source))
    first = min(parse_time_us(t["timestamp"]) for t in ticks)
    with open(target, "w", encoding="utf-8") as handle:
        for tick in ticks:
            ts = start_us + int((parse_time_us(tick["timestamp"]) - first) / speed)
            tick = dict(tick, timestamp=iso_from_us(ts), localTimestamp=iso_from_us(ts))
            handle.write(json.dumps(tick, separators=(",", ":")) + "\n")
    return len(ticks)


class Heartbeat(threading.Thread):
    """Publishes an empty batch every second. The DirectRunner's Pub/Sub source moves its
    (wall-clock) watermark only when a pull returns, and an empty emulator pull blocks ~29 s:
    without traffic, windows would close up to half a minute late. Empty batches carry no tick,
    so they change no output."""

    def __init__(self, topic: str) -> None:
        super().__init__(daemon=True)
        self._topic = topic
        self._stopped = threading.Event()

    def run(self) -> None:
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        while not self._stopped.wait(1.0):
            now_ms = time.time_ns() // 1_000_000
            publisher.publish(self._topic, b'{"ticks":[]}', ts=str(now_ms), mds_id=f"heartbeat:{now_ms}")

    def stop(self) -> None:
        self._stopped.set()


def _query(client: Any, sql: str) -> list[dict[str, Any]]:
    return [dict(row.items()) for row in client.query(sql).result()]


def bigquery_line(client: Any) -> str:
    """The seed's storage line, from the rows/cost view (priced as the Storage Write API rows
    the demo's pipeline writes, before the free tier)."""
    rows = _query(client, f"SELECT SUM(row_count) AS n, SUM(approx_bytes) AS b, "
                          f"SUM(storage_write_api_usd) AS usd FROM `{PROJECT}.{DATASET}.rows_cost_by_day`")
    n, size, usd = (rows[0]["n"] or 0), (rows[0]["b"] or 0), (rows[0]["usd"] or 0.0)
    return f"💾 BigQuery: {n:,} rows streamed, ~{size / 1e6:.2f}MB, ${usd:.4f} cost"


def summary(client: Any, published: int) -> list[str]:
    """What the views say once the run is over."""
    table = f"`{PROJECT}.{DATASET}"
    counts = {name: _query(client, f"SELECT COUNT(*) AS n FROM {table}.{name}`")[0]["n"]
              for name in ("ticks", "candles", "dead_letter")}
    latest = _query(client, f"SELECT timeframe, COUNT(*) AS n, SUM(trades) AS trades "
                            f"FROM {table}.candles_latest` WHERE is_final GROUP BY timeframe ORDER BY timeframe")
    current = _query(client, f"SELECT timeframe, timestamp_in, close FROM {table}.candles_current` "
                             f"ORDER BY timeframe")
    latency = np.array([r["latency_ms"] for r in _query(
        client, f"SELECT latency_ms FROM {table}.candles` WHERE is_final AND latency_ms IS NOT NULL")])
    lines = ["", "📋 Summary (from the BigQuery tables and views)",
             f"   ticks published: {published:,}   ticks in BigQuery: {counts['ticks']:,}   "
             f"dead letters: {counts['dead_letter']:,}   candle rows: {counts['candles']:,}"]
    for row in latest:
        lines.append(f"   {row['timeframe']:>4}: {row['n']:>5} candles (latest revisions), "
                     f"{row['trades'] or 0:,} trades")
    for row in current:
        lines.append(f"   newest {row['timeframe']:>4} candle: {row['timestamp_in']} close={row['close']}")
    if latency.size:
        p50, p95, p99 = np.percentile(latency, [50, 95, 99])
        lines.append(f"   candle latency after window close: p50={p50:.0f}ms p95={p95:.0f}ms p99={p99:.0f}ms")
    return lines


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    with PubSubEmulator() as pubsub, BigQueryEmulator() as bigquery, \
            tempfile.TemporaryDirectory(prefix="mds-demo-") as workdir, pubsub_env(pubsub.host):
        print(f"🚀 Pub/Sub emulator {pubsub.host}, BigQuery API {bigquery.endpoint} "
              f"(Storage Write API gRPC {bigquery.grpc_host})", flush=True)
        topic, subscription = ensure_topic_and_subscription(PROJECT, TICKS_TOPIC, TICKS_SUBSCRIPTION)
        client = make_client(PROJECT, bigquery.endpoint)
        ensure_tables(client, f"{PROJECT}:{DATASET}")
        ensure_views(client, f"{PROJECT}:{DATASET}")
        env = dict(os.environ, PUBSUB_EMULATOR_HOST=pubsub.host, GOOGLE_CLOUD_PROJECT=PROJECT,
                   **bigquery.client_env())
        pipeline = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "run", "--runner=BundleBasedDirectRunner",
             f"--input_subscription={subscription}",
             f"--output_dataset={PROJECT}:{DATASET}", f"--mode={args.mode}", "--console=true",
             f"--allowed_lateness_seconds={args.allowed_lateness_seconds}",
             "--early_firing_seconds=10", "--idle_timeout_seconds=120",
             f"--local_journal_dir={os.path.join(workdir, 'journal')}"],
            env=env, start_new_session=True)
        ingest = None
        heartbeat = Heartbeat(topic)
        heartbeat.start()
        try:
            time.sleep(8)  # the DirectRunner needs a few seconds before it pulls
            if pipeline.poll() is not None:
                raise RuntimeError(f"the pipeline exited early with code {pipeline.returncode}")
            ticks_file = os.path.join(workdir, "ticks.jsonl")
            published = restamp(args.input, ticks_file, args.speed, time.time_ns() // 1000 + 2_000_000)
            print(f"📤 publishing {published:,} ticks at {args.speed:g}x into {topic}", flush=True)
            ingest = subprocess.Popen(
                [sys.executable, "-m", "pipelines.cli", "ingest", "--source", ticks_file,
                 "--speed", "1", "--topic", topic, "--duration", str(args.duration)],
                env=env, start_new_session=True)
            deadline = time.monotonic() + args.duration + 5
            while ingest.poll() is None and time.monotonic() < deadline:
                time.sleep(10)
                print(bigquery_line(client), flush=True)
            print(f"⏳ waiting {args.drain_seconds:.0f}s for the last windows to close", flush=True)
            time.sleep(args.drain_seconds)
            print(bigquery_line(client), flush=True)
            for line in summary(client, published):
                print(line, flush=True)
        finally:
            heartbeat.stop()
            for process in (ingest, pipeline):
                if process is not None and process.poll() is None:
                    terminate_group(process)
    print("✅ demo finished; emulators stopped", flush=True)
    return 0

