"""Memory soak of the streaming chain: is every process's memory flat over a long run?

Runs the local chain of ``bench.run``'s streaming stage (Pub/Sub emulator → ``mds run`` on the
DirectRunner → local BigQuery API server, fed by ``mds ingest`` at ``--rate`` ticks/s of the
generated day re-stamped to now) for ``--minutes``, samples the RSS of each process tree every
``--sample-seconds`` and prints the series, then a line per process: RSS after warm-up, at the
end, and the least-squares slope over the run after warm-up (MB per 10 minutes). Memory that
grows with the data a server STORES (bqemulator's tables in ``--mode both``) is not a leak; the
pipeline and the ingest worker should be flat. Not a test: it prints figures.

    .venv/bin/python -m bench.soak [--minutes 30] [--rate 2000] [--mode both]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Optional

import numpy as np

from bench.generate_day import DEFAULT_SEED, DEFAULT_TICKS, ensure_day
from bench.run import (DATASET, MDS, PROJECT, REPO, _rss_bytes, _tree_pids, load_day,
                       restamped_slice)

WARM_UP_SECONDS = 120


def _tree_rss_mb(pid: int) -> float:
    return sum(_rss_bytes(p) for p in _tree_pids(pid)) / 2**20


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="offered ticks/s")
    parser.add_argument("--mode", choices=("candles", "ticks", "both"), default="both")
    parser.add_argument("--sample-seconds", type=float, default=30.0)
    parser.add_argument("--batch-size", type=int, default=1000, help="ticks per Pub/Sub message")
    parser.add_argument("--work-dir", default="out/bench")
    args = parser.parse_args(argv)

    from pipelines.demo import Heartbeat
    from pipelines.emulators import (
        BigQueryEmulator,
        PubSubEmulator,
        ensure_topic_and_subscription,
        pubsub_env,
        terminate_group,
    )
    from transforms.bigquery import make_client

    os.chdir(REPO)
    os.makedirs(args.work_dir, exist_ok=True)
    seconds = args.minutes * 60
    day = load_day(ensure_day(DEFAULT_TICKS, DEFAULT_SEED))
    ticks = min(int(args.rate * seconds), day.ticks)
    with PubSubEmulator() as pubsub, BigQueryEmulator() as bigquery, pubsub_env(pubsub.host):
        topic, subscription = ensure_topic_and_subscription(PROJECT, "ticks", "ticks-sub")
        env = dict(os.environ, PUBSUB_EMULATOR_HOST=pubsub.host, **bigquery.client_env())
        log = open(os.path.join(args.work_dir, "soak_pipeline.log"), "wb")
        pipeline = subprocess.Popen(
            MDS + ["run", "--runner=BundleBasedDirectRunner", f"--input_subscription={subscription}",
                   f"--output_dataset={PROJECT}:{DATASET}", f"--mode={args.mode}",
                   "--allowed_lateness_seconds=30", "--early_firing_seconds=10", "--idle_timeout_seconds=120",
                   f"--local_journal_dir={os.path.join(args.work_dir, 'journal')}"],
            env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        heartbeat = Heartbeat(topic)
        ingest = None
        series: dict[str, list[tuple[float, float]]] = {"pipeline": [], "ingest": [], "pubsub emulator": [],
                                                        "bqemulator": []}
        try:
            client = make_client(PROJECT, bigquery.endpoint)
            time.sleep(20)  # graph built, tables and views created
            heartbeat.start()
            source = os.path.join(args.work_dir, "soak_slice.csv")
            restamped_slice(day, ticks, seconds, time.time_ns() // 1000 + 5_000_000, source)
            ingest = subprocess.Popen(MDS + ["ingest", "--source", source, "--speed", "1", "--topic", topic,
                                             "--batch-size", str(args.batch_size), "--quiet"],
                                      env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            started = time.monotonic()
            pids = {"pipeline": pipeline.pid, "ingest": ingest.pid, "pubsub emulator": pubsub.process.pid,
                    "bqemulator": bigquery.process.pid}
            print(f"soak: {ticks:,} ticks at {args.rate:,.0f}/s for {args.minutes:g} min, mode {args.mode}",
                  flush=True)
            print("  min  " + "  ".join(f"{name:>16}" for name in series), flush=True)
            while ingest.poll() is None and pipeline.poll() is None:
                elapsed = time.monotonic() - started
                for name, pid in pids.items():
                    series[name].append((elapsed, _tree_rss_mb(pid)))
                print(f"{elapsed / 60:5.1f}  " + "  ".join(f"{series[n][-1][1]:13,.0f} MB" for n in series),
                      flush=True)
                time.sleep(args.sample_seconds)
            time.sleep(75)  # the last windows close and their rows land
            stored = {table: int(list(client.query(
                f"SELECT COUNT(*) AS n FROM `{PROJECT}.{DATASET}.{table}`").result())[0]["n"])
                for table in ("ticks", "candles", "dead_letter")}
        finally:
            heartbeat.stop()
            for process in (ingest, pipeline):
                if process is not None and process.poll() is None:
                    terminate_group(process)
            log.close()
    if pipeline.returncode not in (None, 0, -15):
        print(f"the pipeline exited with {pipeline.returncode}; see {log.name}")
    print(f"stored rows: {stored}  (ticks published: {ticks:,})")
    print(f"{'process':<16} {'after warm-up':>14} {'end':>10} {'slope':>16}")
    for name, points in series.items():
        after = [(t, mb) for t, mb in points if t >= WARM_UP_SECONDS]
        if len(after) < 2:
            continue
        t, mb = np.array(after).T
        slope = np.polyfit(t, mb, 1)[0] * 600
        print(f"{name:<16} {mb[0]:11,.0f} MB {mb[-1]:7,.0f} MB {slope:+10.1f} MB/10min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
