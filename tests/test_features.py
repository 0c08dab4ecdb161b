"""HFT feature maths (SPEC §5) against TA-Lib's reference outputs, the talib package itself,
hand-computed cases, and the incremental step() path against the vectorised one."""
from __future__ import annotations

import math
import pickle
import statistics
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import pytest
import talib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms import indicators as F
from transforms.feature_state import initial_state, step
from transforms.features import CANDLE_FIELDS, FEATURE_NAMES, compute_features

REFERENCE_CSV = Path(__file__).parent / "data" / "talib_BTCUSDT_2017-08-17_1m.csv"
TA_RTOL = 1e-9  # SPEC §5: agreement with TA-Lib
PATHS_RTOL = 1e-12  # step() against compute_features()
MINUTE = 60.0


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float, what: str) -> None:
    """Same NaN positions, and |actual − expected| ≤ rtol·|expected| elsewhere (so an expected
    0 must be exactly 0). Features are never infinite."""
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    assert actual.shape == expected.shape, what
    assert not np.isinf(actual).any() and not np.isinf(expected).any(), f"{what}: infinity"
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_a, nan_e), (
        f"{what}: NaN pattern differs at {np.flatnonzero(nan_a != nan_e)[:10]}")
    ok = ~nan_e
    error = np.abs(actual[ok] - expected[ok])
    bound = rtol * np.abs(expected[ok])
    bad = error > bound
    assert not bad.any(), (
        f"{what}: {bad.sum()} values off, worst relative "
        f"{np.max(error / np.maximum(np.abs(expected[ok]), 1e-300)):.3g} at "
        f"{np.flatnonzero(ok)[np.argmax(bad)]}")


def first_valid(values: np.ndarray) -> int | None:
    valid = np.flatnonzero(~np.isnan(values))
    return int(valid[0]) if valid.size else None


def run_steps(candles: Mapping[str, np.ndarray], timeframe_seconds: float
              ) -> dict[str, np.ndarray]:
    """Feed the series through step() one candle at a time; None → NaN for comparison."""
    state = initial_state()
    columns: dict[str, list[float]] = {name: [] for name in FEATURE_NAMES}
    for i in range(len(candles["close"])):
        candle = {field: (None if field == "vwap" and np.isnan(values[i]) else float(values[i]))
                  for field, values in candles.items()}
        state, row = step(state, candle, timeframe_seconds)
        for name in FEATURE_NAMES:
            columns[name].append(math.nan if row[name] is None else row[name])
    return {name: np.array(values) for name, values in columns.items()}


def assert_paths_agree(candles: Mapping[str, np.ndarray], timeframe_seconds: float
                       ) -> dict[str, np.ndarray]:
    batch = compute_features(candles, timeframe_seconds)
    incremental = run_steps(candles, timeframe_seconds)
    assert list(batch) == list(FEATURE_NAMES)
    for name in FEATURE_NAMES:
        assert_close(incremental[name], batch[name], PATHS_RTOL, f"step vs batch {name}")
    return batch


# ---------------------------------------------------------------------------------------------
# Real series: Binance BTCUSDT 1m closes of 2017-08-17, empty minutes as gap candles.
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return pd.read_csv(REFERENCE_CSV)


@pytest.fixture(scope="module")
def reference_candles(reference: pd.DataFrame) -> dict[str, np.ndarray]:
    """Candles along the reference close path. Closes and per-minute VWAP are real; the CSV has
    no OHLC or volumes, so open = previous close, high/low span open and close, and volumes are
    fixed non-zero amounts on traded minutes (gap minutes get SPEC §3.3's zero volume, NaN vwap)."""
    close = reference["close"].to_numpy()
    empty = reference["is_empty_minute"].to_numpy(dtype=bool)
    open_ = np.concatenate([close[:1], close[:-1]])
    volume = np.where(empty, 0.0, 0.75)
    return {
        "open": open_, "high": np.maximum(open_, close), "low": np.minimum(open_, close),
        "close": close, "volume": volume, "quote_volume": volume * close,
        "trades": np.where(empty, 0.0, 3.0), "vwap": reference["vwap_bar_from_trades"].to_numpy(),
        "buy_volume": np.where(empty, 0.0, 0.25),
    }


def test_reference_series_has_gaps(reference: pd.DataFrame,
                                   reference_candles: dict[str, np.ndarray]) -> None:
    empty = reference["is_empty_minute"].to_numpy(dtype=bool)
    assert len(reference) == 1200 and empty.sum() > 300
    assert np.isnan(reference_candles["vwap"][empty]).all()


@pytest.mark.parametrize("column, first_index", [
    ("sma_5", 4), ("sma_10", 9), ("sma_20", 19), ("ema_5", 4), ("ema_10", 9), ("ema_20", 19),
    ("wma_5", 4), ("rsi_5", 5), ("macd", 33), ("macd_signal", 33), ("macd_hist", 33),
])
def test_features_match_talib_reference_csv(reference: pd.DataFrame,
                                            reference_candles: dict[str, np.ndarray],
                                            column: str, first_index: int) -> None:
    features = compute_features(reference_candles, MINUTE)
    expected = reference[column].to_numpy()
    assert first_valid(expected) == first_index
    assert first_valid(features[column]) == first_index
    assert_close(features[column], expected, TA_RTOL, column)


def test_bands_and_stddev_match_talib_reference_csv(reference: pd.DataFrame) -> None:
    close = reference["close"].to_numpy()
    upper, middle, lower = F.bollinger_bands(close)
    for column, values in [("bb_upper", upper), ("bb_middle", middle), ("bb_lower", lower),
                           ("stddev_20_pop", F.rolling_std(close, 20, ddof=0))]:
        assert first_valid(reference[column].to_numpy()) == 19
        assert_close(values, reference[column].to_numpy(), TA_RTOL, column)
    # The reference has flat 20-minute windows: their stdev is exactly 0 there, as in TA-Lib.
    assert (reference["stddev_20_pop"] == 0).sum() >= 1


def test_bb_position_follows_reference_bands(reference: pd.DataFrame,
                                             reference_candles: dict[str, np.ndarray]) -> None:
    position = compute_features(reference_candles, MINUTE)["bb_position"]
    upper, lower = reference["bb_upper"].to_numpy(), reference["bb_lower"].to_numpy()
    close = reference["close"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(upper == lower, np.nan, (close - lower) / (upper - lower))
    assert first_valid(position) == 19
    assert np.isnan(position[np.flatnonzero(upper == lower)]).all()  # flat window: NULL
    assert_bb_position_close(position, expected)


def assert_bb_position_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """bb_position is a place inside the band, in band widths: its error is measured against
    the width (1), not against the position itself, which is legitimately ~0 when the close
    sits on the lower band and then carries no relative digits."""
    assert np.array_equal(np.isnan(actual), np.isnan(expected))
    ok = ~np.isnan(expected)
    assert np.all(np.abs(actual[ok] - expected[ok]) <= TA_RTOL * np.maximum(1.0, np.abs(expected[ok])))


def test_step_equals_batch_on_reference_series(reference_candles: dict[str, np.ndarray]) -> None:
    batch = assert_paths_agree(reference_candles, MINUTE)
    for name in FEATURE_NAMES:  # every feature gets defined somewhere on a real day
        assert first_valid(batch[name]) is not None, name


# ---------------------------------------------------------------------------------------------
# Against the talib package directly, on the real closes and on random series with gaps.
# ---------------------------------------------------------------------------------------------

def random_closes_with_gaps(seed: int, size: int, level: float, tick: float) -> np.ndarray:
    """A random walk quoted on a tick grid, with runs of repeated closes (gap candles)."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, 0.002, size) * level
    steps[rng.random(size) < 0.35] = 0.0  # gap candles: close = previous close
    steps[rng.integers(0, size - 40):][:25] = 0.0  # and one long silent stretch
    return np.maximum(np.round((level + np.cumsum(steps)) / tick) * tick, tick)


CLOSE_SERIES = {
    "btc_1m": lambda: pd.read_csv(REFERENCE_CSV)["close"].to_numpy(),
    "random_gaps": lambda: random_closes_with_gaps(7, 3000, 100.0, 0.01),
    "random_gaps_btc_level": lambda: random_closes_with_gaps(11, 3000, 65000.0, 0.01),
    # Sub-cent quotes (SHIB-like): TA-Lib 0.8's zero tests are scale-aware; ours must be too.
    "random_gaps_sub_cent": lambda: random_closes_with_gaps(13, 3000, 2.4e-5, 1e-9),
}


@pytest.mark.parametrize("series", sorted(CLOSE_SERIES))
def test_indicators_match_talib_package(series: str) -> None:
    close = CLOSE_SERIES[series]()
    for period in (5, 10, 20):
        assert_close(F.sma(close, period), talib.SMA(close, period), TA_RTOL, f"SMA {period}")
        assert_close(F.ema(close, period), talib.EMA(close, period), TA_RTOL, f"EMA {period}")
    assert_close(F.wma(close, 5), talib.WMA(close, 5), TA_RTOL, "WMA 5")
    for period in (5, 14):
        assert_close(F.rsi(close, period), talib.RSI(close, period), TA_RTOL, f"RSI {period}")
    for mine, theirs, part in zip(F.macd(close), talib.MACD(close, 12, 26, 9),
                                  ("macd", "signal", "hist")):
        assert_close(mine, theirs, TA_RTOL, f"MACD {part}")
    for mine, theirs, band in zip(F.bollinger_bands(close), talib.BBANDS(close, 20, 2.0, 2.0, 0),
                                  ("upper", "middle", "lower")):
        assert_close(mine, theirs, TA_RTOL, f"BBANDS {band}")
    assert_close(F.rolling_std(close, 20, ddof=0), talib.STDDEV(close, 20, 1.0), TA_RTOL,
                 "STDDEV 20")


@pytest.mark.parametrize("series", sorted(CLOSE_SERIES))
def test_bb_position_matches_talib_bands(series: str) -> None:
    close = CLOSE_SERIES[series]()
    candles = closes_only_candles(close)
    upper, _, lower = talib.BBANDS(close, 20, 2.0, 2.0, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(upper == lower, np.nan, (close - lower) / (upper - lower))
    assert_bb_position_close(compute_features(candles, MINUTE)["bb_position"], expected)


def closes_only_candles(close: np.ndarray) -> dict[str, np.ndarray]:
    """Candles whose open is the previous close and that trade every bar."""
    open_ = np.concatenate([close[:1], close[:-1]])
    ones = np.ones_like(close)
    return {"open": open_, "high": np.maximum(open_, close), "low": np.minimum(open_, close),
            "close": close, "volume": ones, "quote_volume": close.copy(), "trades": ones,
            "vwap": close.copy(), "buy_volume": 0.5 * ones}


def test_flat_series_rsi_is_zero_and_bands_are_null() -> None:
    # A key that never moves: TA-Lib's RSI answers 0 (no gain, no loss), and a zero-width band
    # leaves bb_position undefined.
    close = np.full(40, 4261.48)
    features = compute_features(closes_only_candles(close), MINUTE)
    assert_close(features["rsi_5"], talib.RSI(close, 5), 0.0, "flat RSI")
    assert np.all(features["rsi_5"][5:] == 0.0)
    assert np.all(F.rolling_std(close, 20, ddof=0)[19:] == 0.0)
    assert np.isnan(features["bb_position"]).all()
    assert np.all(features["volatility_5"][5:] == 0.0)


# ---------------------------------------------------------------------------------------------
# Hand-checked small cases.
# ---------------------------------------------------------------------------------------------

def hand_candles() -> dict[str, np.ndarray]:
    """Six 1m candles; index 3 is a gap candle (no trades: O=H=L=C=previous close)."""
    nan = math.nan
    return {
        "open": np.array([100.0, 101.0, 102.0, 102.0, 102.0, 104.0]),
        "high": np.array([102.0, 103.0, 102.5, 102.0, 105.0, 104.5]),
        "low": np.array([99.0, 100.0, 101.0, 102.0, 101.5, 102.5]),
        "close": np.array([101.0, 102.0, 102.0, 102.0, 104.0, 103.0]),
        "volume": np.array([2.0, 4.0, 1.0, 0.0, 5.0, 3.0]),
        "quote_volume": np.array([201.0, 406.0, 101.8, 0.0, 515.0, 310.5]),
        "trades": np.array([4.0, 8.0, 2.0, 0.0, 10.0, 6.0]),
        "vwap": np.array([100.5, 101.5, 101.8, nan, 103.0, 103.5]),
        "buy_volume": np.array([1.5, 1.0, 0.0, 0.0, 5.0, 1.0]),
    }


def test_hand_checked_price_features() -> None:
    f = assert_paths_agree(hand_candles(), MINUTE)
    c = hand_candles()["close"]
    # momentum_n = c_t / c_{t-n} − 1: first at t = n.
    assert np.isnan(f["momentum_3"][:3]).all() and np.isnan(f["momentum_5"][:5]).all()
    assert f["momentum_3"][3] == pytest.approx(102 / 101 - 1, rel=1e-15)
    assert f["momentum_3"][5] == pytest.approx(103 / 102 - 1, rel=1e-15)
    assert f["momentum_5"][5] == pytest.approx(103 / 101 - 1, rel=1e-15)
    # velocity = price change per second of the 60 s timeframe; acceleration its change.
    assert np.isnan(f["velocity"][0]) and np.isnan(f["acceleration"][:2]).all()
    assert f["velocity"][1] == pytest.approx(1 / 60, rel=1e-15)  # 101 → 102
    assert f["velocity"][2] == 0.0  # 102 → 102
    assert f["acceleration"][2] == pytest.approx(-1 / 60, rel=1e-15)
    assert f["velocity"][4] == pytest.approx(2 / 60, rel=1e-15)  # 102 → 104 after the gap
    assert f["acceleration"][5] == pytest.approx(-1 / 60 - 2 / 60, rel=1e-15)  # 104 → 103
    # returns.
    assert f["return_1"][1] == pytest.approx(102 / 101 - 1, rel=1e-15)
    assert f["log_return"][4] == pytest.approx(math.log(104 / 102), rel=1e-15)
    assert f["log_return"][3] == 0.0  # a gap candle does not move the price
    # volatility_5 = sample stdev of the 5 log returns ending at t (needs 5 returns: t ≥ 5).
    returns = [math.log(c[i] / c[i - 1]) for i in range(1, 6)]
    assert np.isnan(f["volatility_5"][:5]).all() and np.isnan(f["volatility_10"]).all()
    assert f["volatility_5"][5] == pytest.approx(statistics.stdev(returns), rel=1e-12)
    # hl_range = (high − low) / close.
    assert f["hl_range"][0] == pytest.approx((102 - 99) / 101, rel=1e-15)
    assert f["hl_range"][3] == 0.0
    # sma/wma by hand on the first five closes 101, 102, 102, 102, 104.
    assert f["sma_5"][4] == pytest.approx(511 / 5, rel=1e-15)
    assert f["wma_5"][4] == pytest.approx((1 * 101 + 2 * 102 + 3 * 102 + 4 * 102 + 5 * 104) / 15,
                                          rel=1e-15)
    assert f["ema_5"][4] == f["sma_5"][4]  # seeded with the SMA of the first 5 closes
    assert f["ema_5"][5] == pytest.approx(f["sma_5"][4] + (103 - f["sma_5"][4]) / 3, rel=1e-15)


def test_hand_checked_volume_features() -> None:
    f = assert_paths_agree(hand_candles(), MINUTE)
    # trade_intensity = trades per second; avg_trade_size = volume / trades (NULL when no trades).
    assert f["trade_intensity"][0] == pytest.approx(4 / 60, rel=1e-15)
    assert f["trade_intensity"][3] == 0.0
    assert f["avg_trade_size"][1] == 0.5 and np.isnan(f["avg_trade_size"][3])
    # Amihud price_impact = |ln(c/o)| / quote_volume (NULL when nothing traded).
    assert f["price_impact"][0] == pytest.approx(math.log(101 / 100) / 201, rel=1e-14)
    assert f["price_impact"][5] == pytest.approx(abs(math.log(103 / 104)) / 310.5, rel=1e-14)
    assert np.isnan(f["price_impact"][3])
    # buy_ratio = buy_volume / volume (NULL when volume is 0).
    assert f["buy_ratio"][0] == 0.75 and f["buy_ratio"][2] == 0.0 and np.isnan(f["buy_ratio"][3])
    # vwap_deviation = (c − vwap) / vwap (NULL for the gap candle, whose vwap is NULL).
    assert f["vwap_deviation"][0] == pytest.approx((101 - 100.5) / 100.5, rel=1e-14)
    assert np.isnan(f["vwap_deviation"][3])
    # volume_sma_5 over volumes 2, 4, 1, 0, 5 = 12/5; volume_ratio = v / volume_sma_5.
    assert np.isnan(f["volume_sma_5"][:4]).all()
    assert f["volume_sma_5"][4] == pytest.approx(12 / 5, rel=1e-15)
    assert f["volume_ratio"][4] == pytest.approx(5 / (12 / 5), rel=1e-15)
    # vwap_5 = Σ quote_volume / Σ volume over 5 candles, gap included.
    assert f["vwap_5"][4] == pytest.approx((201 + 406 + 101.8 + 0 + 515) / 12, rel=1e-14)
    assert f["vwap_5"][5] == pytest.approx((406 + 101.8 + 0 + 515 + 310.5) / 13, rel=1e-14)


def corwin_schultz_by_hand(h1: float, l1: float, h2: float, l2: float) -> float:
    """Corwin & Schultz (2012) eqs. 14, 18, 19, 20 written out, without the 0 floor."""
    beta = math.log(h1 / l1) ** 2 + math.log(h2 / l2) ** 2
    gamma = math.log(max(h1, h2) / min(l1, l2)) ** 2
    k = 3 - 2 * math.sqrt(2)
    alpha = (math.sqrt(2 * beta) - math.sqrt(beta)) / k - math.sqrt(gamma / k)
    return 2 * (math.exp(alpha) - 1) / (1 + math.exp(alpha))


def test_hand_checked_corwin_schultz_spread() -> None:
    f = assert_paths_agree(hand_candles(), MINUTE)
    assert np.isnan(f["spread_proxy"][0])  # needs two candles
    # Candles 4 and 5: wide overlapping ranges (H 105/104.5, L 101.5/102.5) give a positive spread.
    positive = corwin_schultz_by_hand(105.0, 101.5, 104.5, 102.5)
    assert positive > 0
    assert f["spread_proxy"][5] == pytest.approx(positive, rel=1e-9)
    # Candles 3 → 4: a flat gap candle next to a ranging one: β = γ, so α = 0 and S = 0.
    assert f["spread_proxy"][4] == pytest.approx(corwin_schultz_by_hand(102.0, 102.0, 105.0, 101.5),
                                                 abs=1e-15)


def test_corwin_schultz_negative_estimate_is_floored_at_zero() -> None:
    # A jump between two tight candles (100–101 then 110–111): the two-candle range is far
    # larger than the single-candle ranges explain, so the raw estimate is negative → 0.
    assert corwin_schultz_by_hand(101.0, 100.0, 111.0, 110.0) < 0
    candles = closes_only_candles(np.array([100.5, 110.5]))
    candles["high"], candles["low"] = np.array([101.0, 111.0]), np.array([100.0, 110.0])
    assert_paths_agree(candles, MINUTE)
    assert compute_features(candles, MINUTE)["spread_proxy"][1] == 0.0


def test_corwin_schultz_of_two_flat_candles_is_zero() -> None:
    candles = closes_only_candles(np.full(3, 50.0))
    assert list(compute_features(candles, MINUTE)["spread_proxy"][1:]) == [0.0, 0.0]


def test_null_when_denominators_are_zero() -> None:
    # Five zero-volume candles (e.g. zero-amount prints): every volume-based ratio is NULL.
    candles = closes_only_candles(np.array([10.0, 10.5, 10.5, 10.25, 10.0]))
    candles["volume"] = candles["quote_volume"] = candles["buy_volume"] = np.zeros(5)
    f = assert_paths_agree(candles, 15.0)
    for name in ("volume_ratio", "vwap_5", "buy_ratio", "price_impact"):
        assert np.isnan(f[name]).all(), name
    assert np.all(f["volume_sma_5"][4] == 0.0)
    assert f["trade_intensity"][0] == pytest.approx(1 / 15, rel=1e-15)


def test_overflowing_ratio_is_null_not_infinite() -> None:
    # A subnormal quote volume (absurd, but finite and >= 0, so valid input; hypothesis found
    # it) makes Amihud's |ln(c/o)|/quote_volume overflow to inf, which BigQuery's JSON insert
    # cannot take: it is NULL.
    candles = closes_only_candles(np.array([10.0, 11.0]))
    candles["quote_volume"] = np.array([10.0, 5e-324])
    f = assert_paths_agree(candles, MINUTE)
    assert np.isnan(f["price_impact"][1]) and f["price_impact"][0] == 0.0  # open == close


def test_short_history_is_null_never_made_up() -> None:
    candles = closes_only_candles(np.linspace(100.0, 101.0, 33))  # one short of MACD's first bar
    f = compute_features(candles, MINUTE)
    assert np.isnan(f["macd"]).all() and np.isnan(f["macd_signal"]).all()
    assert np.isnan(f["macd_hist"]).all()
    assert first_valid(f["bb_position"]) == 19 and first_valid(f["rsi_5"]) == 5
    state = initial_state()
    for i in range(33):
        state, row = step(state, {k: float(v[i]) for k, v in candles.items()}, MINUTE)
        assert row["macd"] is None
    assert set(compute_features({k: v[:0] for k, v in candles.items()}, MINUTE)) == set(FEATURE_NAMES)


# ---------------------------------------------------------------------------------------------
# step() == compute_features() on generated series with gaps; state properties.
# ---------------------------------------------------------------------------------------------

@st.composite
def candle_series(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """A contiguous series as the candle builder emits it: the first candle trades; later ones
    may be gap candles (O=H=L=C=previous close, zero volume, NULL vwap)."""
    # Short series (NULL warm-up) and series past MACD's first value (index 33).
    size = draw(st.one_of(st.integers(min_value=1, max_value=12),
                          st.integers(min_value=34, max_value=80)))
    level = draw(st.sampled_from([1e-5, 1.0, 100.0, 65000.0]))
    moves = st.floats(min_value=-0.05, max_value=0.05, allow_nan=False)
    fields: dict[str, list[float]] = {field: [] for field in CANDLE_FIELDS}
    previous = level
    for i in range(size):
        if i > 0 and draw(st.booleans()) and draw(st.booleans()):  # ~25% gap candles
            bar = dict(open=previous, high=previous, low=previous, close=previous, volume=0.0,
                       quote_volume=0.0, trades=0.0, vwap=math.nan, buy_volume=0.0)
        else:
            open_ = previous * (1 + draw(moves))
            close = previous * (1 + draw(moves))
            high = max(open_, close) * (1 + abs(draw(moves)))
            low = min(open_, close) / (1 + abs(draw(moves)))
            volume = draw(st.floats(min_value=0.0, max_value=1e4, allow_nan=False))
            vwap = low + (high - low) * draw(st.floats(min_value=0.0, max_value=1.0))
            trades = float(draw(st.integers(min_value=1, max_value=500)))
            bar = dict(open=open_, high=high, low=low, close=close, volume=volume,
                       quote_volume=vwap * volume, trades=trades,
                       vwap=vwap if volume > 0 else math.nan,
                       buy_volume=volume * draw(st.floats(min_value=0.0, max_value=1.0)))
        for field in CANDLE_FIELDS:
            fields[field].append(bar[field])
        previous = bar["close"]
    return {field: np.array(values) for field, values in fields.items()}


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(candles=candle_series(), timeframe=st.sampled_from([15.0, 60.0, 300.0]))
def test_step_equals_batch_on_generated_series(candles: dict[str, np.ndarray],
                                               timeframe: float) -> None:
    assert_paths_agree(candles, timeframe)


def test_step_does_not_mutate_and_replays_from_a_kept_state(
        reference_candles: dict[str, np.ndarray]) -> None:
    """The DoFn keeps the states of the last candles and re-runs step() from the state before
    a corrected candle: that must reproduce exactly what a fresh run over the corrected series
    gives."""
    candles = [{k: float(v[i]) for k, v in reference_candles.items()} for i in range(120)]
    state, kept = initial_state(), []
    for candle in candles:
        kept.append(state)
        snapshot = pickle.dumps(state)
        state, _ = step(state, candle, MINUTE)
        assert pickle.dumps(kept[-1]) == snapshot  # input state untouched
    corrected = dict(candles[100], close=candles[100]["close"] + 7.5,
                     high=max(candles[100]["high"], candles[100]["close"] + 7.5))
    replayed = kept[100]
    replay_rows = []
    for candle in [corrected] + candles[101:]:
        replayed, row = step(replayed, candle, MINUTE)
        replay_rows.append(row)
    fresh = run_steps({k: np.array([c[k] for c in candles[:100] + [corrected] + candles[101:]])
                       for k in CANDLE_FIELDS}, MINUTE)
    for offset, row in enumerate(replay_rows):
        for name in FEATURE_NAMES:
            expected = fresh[name][100 + offset]
            assert (row[name] is None) == bool(np.isnan(expected)), name
            assert row[name] is None or row[name] == expected, name


def test_state_is_bounded_and_picklable(reference_candles: dict[str, np.ndarray]) -> None:
    state = initial_state()
    for i in range(len(reference_candles["close"])):
        state, row = step(state, {k: float(v[i]) for k, v in reference_candles.items()}, MINUTE)
    restored = pickle.loads(pickle.dumps(state))
    assert restored.index == len(reference_candles["close"])
    for buffer in (restored.closes, restored.volumes, restored.quote_volumes, restored.log_returns):
        assert len(buffer) <= 35
    assert all(value is None or type(value) is float for value in row.values())
    assert len(pickle.dumps(state)) < 2000


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error, never a NaN that would poison the key's EMAs for good.
# ---------------------------------------------------------------------------------------------

GOOD_CANDLE = dict(open=10.0, high=11.0, low=9.5, close=10.5, volume=2.0, quote_volume=21.0,
                   trades=3.0, vwap=10.5, buy_volume=1.0)


@pytest.mark.parametrize("change, message", [
    ({"close": math.nan}, "close must be finite"),
    ({"open": 0.0}, "open must be finite and > 0"),
    ({"volume": -1.0}, "volume must be finite and >= 0"),
    ({"high": 9.0}, "below low"),
    ({"vwap": -3.0}, "vwap must be NaN/None"),
    ({"trades": "many"}, "not a number"),
    ({"close": None}, "not a number"),
])
def test_step_rejects_bad_candles(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        step(initial_state(), {**GOOD_CANDLE, **change}, MINUTE)


def test_step_rejects_missing_field_and_bad_timeframe() -> None:
    with pytest.raises(ValueError, match="lacks field"):
        step(initial_state(), {k: v for k, v in GOOD_CANDLE.items() if k != "buy_volume"}, MINUTE)
    with pytest.raises(ValueError, match="timeframe_seconds"):
        step(initial_state(), GOOD_CANDLE, 0)


def test_compute_features_rejects_bad_series() -> None:
    candles = closes_only_candles(np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"candles\['volume'\] has shape"):
        compute_features({**candles, "volume": np.ones(2)}, MINUTE)
    with pytest.raises(ValueError, match=r"candles\['close'\]\[1\]"):
        compute_features({**candles, "close": np.array([1.0, math.inf, 3.0])}, MINUTE)
    with pytest.raises(ValueError, match="lack field"):
        compute_features({k: v for k, v in candles.items() if k != "vwap"}, MINUTE)
