"""Publish throughput of the Python ingest worker into the local Pub/Sub emulator.

Starts the official emulator on a free loopback port, writes N ticks (real BTCUSDT trades of
2017-08-17, repeated with fresh ids and shifted times until N) to a JSONL file, runs
``mds ingest --source FILE --speed 0`` on it in-process, and prints ticks/s. Not a test: a number
to report.

    .venv/bin/python bench/ingest_publish.py [--ticks 50000] [--batch-size 500]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ingest.cli import main as ingest_main  # noqa: E402
from ingest.message import make_tick  # noqa: E402
from pipelines.emulators import PubSubEmulator, pubsub_env  # noqa: E402

TRADES = REPO / "tests" / "fixtures" / "exchanges" / "files" / "BTCUSDT-trades-2017-08-17.csv"
DAY_US = 86_400_000_000


def write_ticks(path: Path, count: int) -> None:
    rows = list(csv.reader(TRADES.open()))
    with path.open("w") as out:
        for n in range(count):
            lap = n // len(rows)
            _, price, qty, _, time_ms, buyer_is_maker, _ = rows[n % len(rows)]
            ts_us = int(time_ms) * 1000 + lap * DAY_US
            tick = make_tick("binance", "BTC-USDT", "BTCUSDT", str(n), float(price), float(qty),
                             "sell" if buyer_is_maker == "True" else "buy", ts_us, ts_us)
            out.write(json.dumps(tick) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, PubSubEmulator() as emulator, pubsub_env(emulator.host):
        source = Path(tmp) / "ticks.jsonl"
        write_ticks(source, args.ticks)
        started = time.perf_counter()
        code = ingest_main(["--source", str(source), "--topic", "bench-ticks", "--create-topic", "--quiet",
                            "--batch-size", str(args.batch_size)])
        elapsed = time.perf_counter() - started
    print(f"BENCH ingest publish: {args.ticks:,} ticks, batch {args.batch_size} → "
          f"{args.ticks / elapsed:,.0f} ticks/s end to end ({elapsed:.2f}s incl. topic creation)")
    return code


if __name__ == "__main__":
    sys.exit(main())
