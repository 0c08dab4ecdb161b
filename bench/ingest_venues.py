"""Publish rate of both ingest workers per venue, into the local Pub/Sub emulator.

For each venue, the trade frames of its recorded session (tests/fixtures/ingest/sessions, the
venue's documented formats) are repeated with fresh trade ids and times into a file of Tardis
data-feed lines (``--trades`` trades), which each worker reads with ``--source`` (the same
normalizer, dedup and publisher as its live and replay paths) and publishes as fast as it can.
ticks/s is the worker's own summary (published ÷ its run time); ticks per CPU-second divides by the
user + system CPU the worker process used (start-up included), a figure that depends less on what
else the shared cores are doing. Not a test: figures to report.

    .venv/bin/python -m bench.ingest_venues [--trades 200000] [--batch-size 500] [--venues bybit,okx]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ingest.normalizers import FeedReader  # noqa: E402
from ingest.venues import load  # noqa: E402
from pipelines.emulators import (  # noqa: E402
    PubSubEmulator,
    ensure_topic_and_subscription,
    pubsub_env,
)
from tests.ingest_harness import load_session, session_names  # noqa: E402

PROJECT = "bench-project"
ID_KEYS = {"t", "a", "trade_id", "i", "tradeId", "trdMatchID"}
MS_KEYS = {"T", "E", "ts", "timestamp"}  # epoch ms; ISO times are left as recorded
PY_SUMMARY = re.compile(r"published ([\d,]+) ticks .* in ([\d.]+)s = ([\d,]+) ticks/s")
NODE_SUMMARY = re.compile(r"ingest summary: ([\d,]+) ticks .* ([\d,]+) ticks/s over ([\d.]+) s")


def _renumber(value: Any, ids: itertools.count, shift_ms: int) -> Any:
    """A frame with every trade id made unique and every ms time moved on by ``shift_ms``."""
    if isinstance(value, list):
        return [_renumber(item, ids, shift_ms) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if key in ID_KEYS:
            out[key] = str(next(ids)) if isinstance(item, str) else next(ids)
        elif key in MS_KEYS and isinstance(item, (int, str)) and str(item).isdigit() and len(str(item)) == 13:
            out[key] = type(item)(int(item) + shift_ms)
        else:
            out[key] = _renumber(item, ids, shift_ms)
    return out


def write_lines(name: str, trades: int, path: Path) -> int:
    """The session's trade frames, repeated until ``trades`` ticks; returns the trades written."""
    session = load_session(name)
    feed, _ = load().resolve(session.exchange, session.symbols)
    frames = []  # (frame, its trades): frames whose every record is a tick
    for _, text in (frame for connection in session.connections for frame in connection):
        records = FeedReader(feed).read(text, 0)
        if records and not any("_error" in r for r in records):
            frames.append((json.loads(text), len(records)))
    ids = itertools.count(1)
    written, n = 0, 0
    with path.open("w", encoding="utf-8") as out:
        while written < trades:
            frame, count = frames[n % len(frames)]
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_732_436_100 + n // 1000)) + f".{n % 1000:03d}0000Z"
            out.write(f"{stamp} {json.dumps(_renumber(frame, ids, n), separators=(',', ':'))}\n")
            written += count
            n += 1
    return written


def measure(worker: str, args: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    """(ticks published, ticks/s by the worker's own clock, CPU seconds of the worker)."""
    command = [sys.executable, "-m", "ingest.cli", *args] if worker == "python" else \
        ["node", str(REPO / "ingest" / "nodejs" / "bin" / "mds-ingest.js"), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    output = result.stdout + result.stderr
    match = (PY_SUMMARY if worker == "python" else NODE_SUMMARY).search(output)
    if result.returncode != 0 or not match:
        raise RuntimeError(f"{worker}: exit {result.returncode}\n{output[-2000:]}")
    published = int(match.group(1).replace(",", ""))
    rate = float((match.group(3) if worker == "python" else match.group(2)).replace(",", ""))
    return published, rate, cpu_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--venues", default=",".join(session_names()))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, PubSubEmulator() as emulator, pubsub_env(emulator.host):
        env = dict(os.environ, PUBSUB_EMULATOR_HOST=emulator.host, METADATA_SERVER_DETECTION="none")
        for name in args.venues.split(","):
            session = load_session(name)
            source = Path(tmp) / f"{name}.lines"
            trades = write_lines(name, args.trades, source)
            for worker in ("python", "node"):
                topic = f"bench-{name}-{worker}"
                ensure_topic_and_subscription(PROJECT, topic)
                published, rate, cpu_s = measure(worker, ["--source", str(source), "--exchange", session.exchange,
                                                   "--symbol", ",".join(session.symbols), "--topic", topic,
                                                   "--project", PROJECT, "--quiet", "--batch-size",
                                                   str(args.batch_size)], env)
                print(f"{name:<16} {worker:<7} {published:>9,} of {trades:,} trades published  {rate:>9,.0f} ticks/s"
                      f"  {published / cpu_s:>9,.0f} ticks per CPU-second", flush=True)
    load = os.getloadavg()[0]
    print(f"\nBENCH ingest per venue ({args.trades:,} trades each, batch {args.batch_size}, "
          f"Pub/Sub emulator, load average {load:.1f} at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
