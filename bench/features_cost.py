"""Per-candle cost of the HFT features: incremental ``step`` (streaming DoFn) against the
vectorised ``compute_features`` (batch path), on a random-walk series with gap candles.

Run from the repo root: ``.venv/bin/python -m bench.features_cost [--candles 10000]``. Not a test:
it prints figures (best of ``repeat`` runs, to keep scheduler noise out) for capacity planning.
"""
from __future__ import annotations

import argparse
import pickle
import time

import numpy as np

from transforms.feature_state import initial_state, step
from transforms.features import CANDLE_FIELDS, compute_features

TIMEFRAME_SECONDS = 15.0


def random_candles(size: int, seed: int = 1) -> dict[str, np.ndarray]:
    """A 15s BTC-like series where about a third of the candles are gaps (no trades)."""
    rng = np.random.default_rng(seed)
    gap = rng.random(size) < 0.33
    gap[0] = False
    close = 65000.0 * np.exp(np.cumsum(np.where(gap, 0.0, rng.normal(0.0, 5e-4, size))))
    open_ = np.concatenate([close[:1], close[:-1]])
    spread = np.where(gap, 0.0, np.abs(rng.normal(0.0, 2e-4, size)))
    volume = np.where(gap, 0.0, rng.exponential(0.5, size))
    return {
        "open": open_, "high": np.maximum(open_, close) * (1 + spread),
        "low": np.minimum(open_, close) / (1 + spread), "close": close,
        "volume": volume, "quote_volume": volume * close,
        "trades": np.where(gap, 0.0, rng.integers(1, 200, size).astype(float)),
        "vwap": np.where(gap, np.nan, close), "buy_volume": volume * rng.random(size),
    }


def step_cost_us(candles: dict[str, np.ndarray]) -> float:
    rows = [{field: (None if field == "vwap" and np.isnan(candles[field][i])
                     else float(candles[field][i])) for field in CANDLE_FIELDS}
            for i in range(len(candles["close"]))]
    state = initial_state()
    start = time.perf_counter()
    for row in rows:
        state, _ = step(state, row, TIMEFRAME_SECONDS)
    return (time.perf_counter() - start) / len(rows) * 1e6


def batch_cost_us(candles: dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    compute_features(candles, TIMEFRAME_SECONDS)
    return (time.perf_counter() - start) / len(candles["close"]) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candles", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    candles = random_candles(args.candles)
    step_us = min(step_cost_us(candles) for _ in range(args.repeat))
    batch_us = min(batch_cost_us(candles) for _ in range(args.repeat))
    state = initial_state()
    for i in range(40):
        state, _ = step(state, {f: float(candles[f][i]) for f in CANDLE_FIELDS}, TIMEFRAME_SECONDS)
    print(f"candles: {args.candles} (15s, ~33% gap candles), best of {args.repeat}")
    print(f"step (incremental):          {step_us:8.2f} µs/candle  "
          f"({1e6 / step_us:,.0f} candles/s per core)")
    print(f"compute_features (batch):    {batch_us:8.2f} µs/candle  "
          f"({1e6 / batch_us:,.0f} candles/s per core)")
    print(f"FeatureState pickled size:   {len(pickle.dumps(state))} bytes")


if __name__ == "__main__":
    main()
