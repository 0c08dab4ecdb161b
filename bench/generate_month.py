"""A month-like set of Tardis datasets files: ``--days`` daily files per symbol, as the datasets
API lays them out (one gzipped ``trades`` CSV per exchange, symbol and UTC day; the cache names of
``tardis-dev``), for the backfill benchmark.

Each day is ``bench.generate_day`` with its own seed, split per symbol; trade ids continue from
one day to the next (an exchange's ids never repeat), so the set is one history, not ten copies.
Same arguments, same files.

    .venv/bin/python -m bench.generate_month [--days 10] [--ticks-per-day 1000000]
"""
from __future__ import annotations

import argparse
import os
from datetime import date, timedelta

from bench.generate_day import DEFAULT_SEED, generate, write

DEFAULT_DAYS = 10
DEFAULT_TICKS_PER_DAY = 1_000_000
FIRST_DAY = date(2024, 3, 1)


def month_dir(days: int, ticks_per_day: int, seed: int) -> str:
    return os.path.join("out", "bench", f"month_{days}d_{ticks_per_day}_seed{seed}")


def ensure_month(days: int = DEFAULT_DAYS, ticks_per_day: int = DEFAULT_TICKS_PER_DAY,
                 seed: int = DEFAULT_SEED) -> tuple[str, list[str]]:
    """(directory, files) of the set, generated unless it is there already."""
    directory = month_dir(days, ticks_per_day, seed)
    id_offset: dict[str, int] = {}
    paths = []
    for n in range(days):
        day = FIRST_DAY + timedelta(days=n)
        names = {native: os.path.join(directory, f"binance_trades_{day}_{native}.csv.gz")
                 for native in ("BTCUSDT", "ETHUSDT", "SOLUSDT")}
        frame = None if all(os.path.exists(p) for p in names.values()) else generate(ticks_per_day, seed + n, str(day))
        for native, path in names.items():
            if frame is not None:
                part = frame[frame["symbol"] == native].copy()
                part["id"] += id_offset.get(native, 0)
                id_offset[native] = id_offset.get(native, 0) + ticks_per_day
                write(part, path)
            paths.append(path)
    return directory, paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.generate_month", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    parser.add_argument("--ticks-per-day", type=int, default=DEFAULT_TICKS_PER_DAY)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    directory, paths = ensure_month(args.days, args.ticks_per_day, args.seed)
    print(f"{len(paths)} files in {directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
