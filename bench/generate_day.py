"""A deterministic, realistic day of crypto trades as a Tardis.dev ``trades`` CSV.gz, for benchmarks.

Real days are large and not shippable, so the benchmarks run on a synthetic one that has the
shape that matters to the pipeline: arrivals cluster (intraday seasonality with a European/US
peak, plus self-exciting bursts, a Hawkes-like Cox process), prices follow a geometric random walk
rounded to the tick size, sizes are log-normal with a heavy tail, and a few symbols interleave.
Everything is vectorised numpy from one seed, so the same arguments give the same bytes.

    .venv/bin/python -m bench.generate_day [--ticks 5000000] [--seed 7] [--out out/bench/...]
"""
from __future__ import annotations

import argparse
import gzip
import os
import time
from dataclasses import dataclass
from datetime import date, datetime, timezone

import numpy as np
import pandas as pd

from ingest.files import TARDIS_HEADER

DAY_SECONDS = 86_400
DEFAULT_TICKS = 5_000_000
DEFAULT_SEED = 7
DEFAULT_DAY = "2024-03-01"


@dataclass(frozen=True)
class SymbolProfile:
    """One instrument: its share of the day's trades and its price/size scale."""

    native: str
    share: float
    start_price: float
    tick_size: float
    daily_volatility: float
    median_size: float
    first_id: int


SYMBOLS = (
    SymbolProfile("BTCUSDT", 0.50, 62_000.0, 0.01, 0.030, 0.002, 3_400_000_000),
    SymbolProfile("ETHUSDT", 0.30, 3_400.0, 0.01, 0.040, 0.03, 1_300_000_000),
    SymbolProfile("SOLUSDT", 0.20, 130.0, 0.01, 0.060, 0.8, 600_000_000),
)


def default_path(ticks: int, seed: int) -> str:
    return os.path.join("out", "bench", f"trades_{ticks}_seed{seed}.csv.gz")


def second_intensity(rng: np.random.Generator) -> np.ndarray:
    """Relative trade intensity for each second of the day (sums to 1).

    Seasonality: a daily cosine peaking at 15:00 UTC (US open overlap) over a floor. Clustering:
    bursts arrive as a Poisson process and excite the intensity with an exponential decay (a
    discretised Hawkes kernel), and a slow log-normal factor varies the level minute to minute.
    """
    t = np.arange(DAY_SECONDS, dtype=np.float64)
    seasonal = 1.0 + 0.6 * np.cos(2 * np.pi * (t - 15 * 3600) / DAY_SECONDS)
    minute_level = np.repeat(np.exp(rng.normal(0.0, 0.35, DAY_SECONDS // 60)), 60)
    impulses = rng.poisson(1 / 120, DAY_SECONDS) * rng.pareto(2.5, DAY_SECONDS) * 8.0
    decay = np.exp(-1.0 / 20.0)  # a burst fades with a ~20 s time constant
    # Exponential filter y[t] = x[t] + decay * y[t-1], vectorised as a scaled cumulative sum in
    # blocks short enough that decay**-n stays finite.
    excitation = np.empty(DAY_SECONDS)
    carry, block = 0.0, 600
    powers = decay ** np.arange(block)
    for start in range(0, DAY_SECONDS, block):
        x = impulses[start:start + block]
        p = powers[:x.size]
        y = p * (carry + np.cumsum(x / p))
        excitation[start:start + block] = y
        carry = y[-1] * decay
    intensity = seasonal * minute_level * (1.0 + excitation)
    return intensity / intensity.sum()


def generate(ticks: int, seed: int, day: str = DEFAULT_DAY) -> pd.DataFrame:
    """The day's trades of every symbol, in Tardis ``trades`` columns, sorted by exchange time."""
    if ticks < len(SYMBOLS):
        raise ValueError(f"--ticks must be at least {len(SYMBOLS)}")
    rng = np.random.default_rng(seed)
    day_start_us = int(datetime.combine(date.fromisoformat(day), datetime.min.time(),
                                        tzinfo=timezone.utc).timestamp() * 1_000_000)
    counts = rng.multinomial(ticks, [s.share for s in SYMBOLS])
    frames = []
    for profile, count in zip(SYMBOLS, counts):
        per_second = rng.multinomial(count, second_intensity(rng))
        seconds = np.repeat(np.arange(DAY_SECONDS, dtype=np.int64), per_second)
        timestamp = np.sort(day_start_us + seconds * 1_000_000
                            + rng.integers(0, 1_000_000, count, dtype=np.int64))
        sigma = profile.daily_volatility / np.sqrt(count)
        log_price = np.log(profile.start_price) + np.cumsum(rng.standard_t(4, count) * sigma / np.sqrt(2))
        price = np.maximum(np.round(np.exp(log_price) / profile.tick_size), 1) * profile.tick_size
        amount = np.round(np.exp(rng.normal(np.log(profile.median_size), 1.3, count)), 6)
        amount = np.maximum(amount, 1e-6)
        # Taker side is persistent over a few trades (order splitting), as on real tapes.
        side_run = np.cumsum(rng.random(count) < 0.35) % 2 == 0
        side = np.where(side_run, "buy", "sell")
        local_timestamp = timestamp + rng.lognormal(np.log(3_000), 0.6, count).astype(np.int64)
        frames.append(pd.DataFrame({
            "exchange": "binance", "symbol": profile.native, "timestamp": timestamp,
            "local_timestamp": local_timestamp,
            "id": profile.first_id + np.arange(count, dtype=np.int64), "side": side,
            "price": np.round(price, 8), "amount": amount,
        }))
    day_frame = pd.concat(frames, ignore_index=True)
    return day_frame.sort_values("timestamp", kind="stable", ignore_index=True)[TARDIS_HEADER]


def write(frame: pd.DataFrame, path: str) -> None:
    """gzip level 1: the file is rewritten per benchmark size, and the reader's cost is what counts."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = path + ".partial"
    with gzip.open(partial, "wt", encoding="utf-8", compresslevel=1, newline="") as handle:
        frame.to_csv(handle, index=False, lineterminator="\n", chunksize=500_000)
    os.replace(partial, path)


def ensure_day(ticks: int, seed: int, path: str | None = None) -> str:
    """Generates the file unless it already exists (same arguments, same content)."""
    path = path or default_path(ticks, seed)
    if not os.path.exists(path):
        write(generate(ticks, seed), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.generate_day", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=DEFAULT_TICKS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--day", default=DEFAULT_DAY, help="UTC date of the trades")
    parser.add_argument("--out", help="output path (default out/bench/trades_<ticks>_seed<seed>.csv.gz)")
    args = parser.parse_args(argv)
    path = args.out or default_path(args.ticks, args.seed)
    started = time.perf_counter()
    frame = generate(args.ticks, args.seed, args.day)
    generated = time.perf_counter()
    write(frame, path)
    print(f"{len(frame):,} trades ({', '.join(f'{s}: {n:,}' for s, n in frame['symbol'].value_counts().items())}) "
          f"→ {path} ({os.path.getsize(path) / 1e6:.1f} MB); generated in {generated - started:.1f}s, "
          f"written in {time.perf_counter() - generated:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
