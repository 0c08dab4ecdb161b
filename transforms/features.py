"""HFT features over a candle series (SPEC §5): pure numpy functions shared by the streaming
stateful DoFn and the vectorised batch path.

Two APIs that must give the same numbers:

* ``compute_features(candles, timeframe_seconds)``: vectorised over a whole contiguous series
  of one key (gap candles included), for batch back-fills and replays.
* ``initial_state()`` / ``step(state, candle, timeframe_seconds)`` (``transforms/feature_state.py``):
  one candle at a time from a small frozen ``FeatureState``, for the streaming DoFn. ``step`` never mutates its input, so
  the DoFn can keep the states of the last few candles and replay from any of them when a late,
  corrected candle arrives.

Both paths perform the same floating-point operations in the same order (sequential window sums,
the same recursion formulas, numpy's ``log``/``exp`` for transcendental functions), so they agree
bit for bit, not just within a tolerance: a replayed candle must not move a feature by noise.

Indicators TA-Lib has (SMA, EMA, WMA, RSI, MACD, BBANDS) follow TA-Lib 0.8's conventions exactly:
seeding, first valid index, and RSI's zero test. A feature is NaN (``None`` from ``step``) until it
has enough history or when it is undefined (a zero denominator); never a made-up number.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from transforms.indicators import (BB_PERIOD, MACD_FAST, bollinger_bands, corwin_schultz, ema,
                                   lagged, macd, rolling_std, rolling_sum, rsi, safe_divide, sma,
                                   wma)

# Output columns, in the order they appear in rows and in the BigQuery schema.
FEATURE_NAMES: tuple[str, ...] = (
    "sma_5", "sma_10", "sma_20", "ema_5", "ema_10", "ema_20", "wma_5",
    "momentum_3", "momentum_5", "velocity", "acceleration",
    "volume_sma_5", "volume_ratio", "vwap_deviation", "vwap_5",
    "return_1", "log_return", "volatility_5", "volatility_10", "hl_range",
    "trade_intensity", "avg_trade_size", "price_impact", "spread_proxy", "buy_ratio",
    "rsi_5", "bb_position", "macd", "macd_signal", "macd_hist",
)

# Candle fields the features read; everything else on a candle row is ignored.
CANDLE_FIELDS: tuple[str, ...] = (
    "open", "high", "low", "close", "volume", "quote_volume", "trades", "vwap", "buy_volume",
)

SMA_PERIODS: tuple[int, ...] = (5, 10, 20)
EMA_PERIODS: tuple[int, ...] = (5, 10, 20)
WMA_PERIOD = 5
MOMENTUM_PERIODS: tuple[int, ...] = (3, 5)
VOLUME_PERIOD = 5  # volume_sma_5 and vwap_5
VOLATILITY_PERIODS: tuple[int, ...] = (5, 10)
RSI_PERIOD = 5

# How much history step() keeps: the longest close window (SMA/BBANDS 20; momentum needs 6).
CLOSE_HISTORY = max(max(SMA_PERIODS), BB_PERIOD, max(MOMENTUM_PERIODS) + 1, MACD_FAST)
LOG_RETURN_HISTORY = max(VOLATILITY_PERIODS)


_PRICE_FIELDS = ("open", "high", "low", "close")
_AMOUNT_FIELDS = ("volume", "quote_volume", "trades", "buy_volume")


def compute_features(candles: Mapping[str, np.ndarray],
                     timeframe_seconds: float) -> dict[str, np.ndarray]:
    """All FEATURE_NAMES over a contiguous candle series of one key (gap candles included).

    ``candles`` holds equal-length float arrays for CANDLE_FIELDS (vwap NaN when no trades).
    Returns one float64 array per feature, NaN where history is short or the value undefined.
    Raises ValueError on malformed input, naming the field and the first bad index.
    """
    seconds = checked_timeframe(timeframe_seconds)
    bars = _checked_series(candles)
    # Overflow (a ratio over a subnormal denominator) and inf − inf are expected on absurd but
    # valid input; their results are mapped to NaN below, so numpy need not warn about them.
    with np.errstate(over="ignore", invalid="ignore"):
        features = _feature_arrays(bars, seconds)
    # An overflowed ratio is no number either (and BigQuery's JSON insert rejects infinities),
    # so every feature is finite or NaN.
    return {name: np.where(np.isfinite(features[name]), features[name], np.nan)
            for name in FEATURE_NAMES}


def _feature_arrays(bars: Mapping[str, np.ndarray], seconds: float) -> dict[str, np.ndarray]:
    open_, high, low, close = bars["open"], bars["high"], bars["low"], bars["close"]
    volume, quote_volume, trades = bars["volume"], bars["quote_volume"], bars["trades"]
    size = close.size

    features: dict[str, np.ndarray] = {}
    for period in SMA_PERIODS:
        features[f"sma_{period}"] = sma(close, period)
    for period in EMA_PERIODS:
        features[f"ema_{period}"] = ema(close, period)
    features[f"wma_{WMA_PERIOD}"] = wma(close, WMA_PERIOD)
    for period in MOMENTUM_PERIODS:
        features[f"momentum_{period}"] = close / lagged(close, period) - 1.0
    previous_close = lagged(close, 1)
    velocity = (close - previous_close) / seconds
    features["velocity"] = velocity
    features["acceleration"] = velocity - lagged(velocity, 1)

    volume_sma = sma(volume, VOLUME_PERIOD)
    features["volume_sma_5"] = volume_sma
    features["volume_ratio"] = safe_divide(volume, volume_sma)
    features["vwap_deviation"] = safe_divide(close - bars["vwap"], bars["vwap"])
    features["vwap_5"] = safe_divide(rolling_sum(quote_volume, VOLUME_PERIOD),
                                      rolling_sum(volume, VOLUME_PERIOD))

    log_return = np.log(close / previous_close)
    features["return_1"] = close / previous_close - 1.0
    features["log_return"] = log_return
    for period in VOLATILITY_PERIODS:
        features[f"volatility_{period}"] = rolling_std(log_return, period, ddof=1)
    features["hl_range"] = (high - low) / close

    features["trade_intensity"] = trades / seconds
    features["avg_trade_size"] = safe_divide(volume, trades)
    features["price_impact"] = safe_divide(np.abs(np.log(close / open_)), quote_volume)
    spread = np.full(size, np.nan)
    if size > 1:
        hl_log = np.log(high / low)
        hl_log_sq = hl_log * hl_log
        pair_range = np.log(np.maximum(high[1:], high[:-1]) / np.minimum(low[1:], low[:-1]))
        spread[1:] = corwin_schultz(hl_log_sq[:-1] + hl_log_sq[1:], pair_range * pair_range)
    features["spread_proxy"] = spread
    features["buy_ratio"] = safe_divide(bars["buy_volume"], volume)

    features[f"rsi_{RSI_PERIOD}"] = rsi(close, RSI_PERIOD)
    upper, _, lower = bollinger_bands(close)
    features["bb_position"] = safe_divide(close - lower, upper - lower)
    features["macd"], features["macd_signal"], features["macd_hist"] = macd(close)
    return features


# --------------------------------------------------------------------------------------------
# Input checks: a bad candle is a clear ValueError (the DoFn dead-letters it), never a NaN that
# silently poisons every later EMA of the key.
# --------------------------------------------------------------------------------------------

def checked_timeframe(timeframe_seconds: float) -> float:
    seconds = float(timeframe_seconds)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"timeframe_seconds must be a finite positive number, got {timeframe_seconds!r}")
    return seconds


def checked_candle(candle: Mapping[str, float | None]) -> dict[str, float]:
    missing = [field for field in CANDLE_FIELDS if field not in candle]
    if missing:
        raise ValueError(f"candle lacks field(s) {missing}")
    bar: dict[str, float] = {}
    for field in CANDLE_FIELDS:
        raw = candle[field]
        if raw is None and field == "vwap":
            bar[field] = math.nan
            continue
        try:
            bar[field] = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"candle field {field!r} is not a number: {raw!r}") from None
    for field in _PRICE_FIELDS:
        if not (math.isfinite(bar[field]) and bar[field] > 0):
            raise ValueError(f"candle {field} must be finite and > 0, got {bar[field]!r}")
    for field in _AMOUNT_FIELDS:
        if not (math.isfinite(bar[field]) and bar[field] >= 0):
            raise ValueError(f"candle {field} must be finite and >= 0, got {bar[field]!r}")
    if bar["high"] < bar["low"]:
        raise ValueError(f"candle high {bar['high']!r} is below low {bar['low']!r}")
    if not (math.isnan(bar["vwap"]) or (math.isfinite(bar["vwap"]) and bar["vwap"] > 0)):
        raise ValueError(f"candle vwap must be NaN/None (no trades) or finite > 0, got {bar['vwap']!r}")
    return bar


def _checked_series(candles: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [field for field in CANDLE_FIELDS if field not in candles]
    if missing:
        raise ValueError(f"candles lack field(s) {missing}")
    bars = {field: np.asarray(candles[field], dtype=np.float64) for field in CANDLE_FIELDS}
    size = bars["close"].shape
    for field, values in bars.items():
        if values.ndim != 1 or values.shape != size:
            raise ValueError(f"candles[{field!r}] has shape {values.shape}, expected {size} like close")

    def first_bad(field: str, bad: np.ndarray, rule: str) -> None:
        if bad.any():
            at = int(np.argmax(bad))
            raise ValueError(f"candles[{field!r}][{at}] = {bars[field][at]!r}: must be {rule}")

    for field in _PRICE_FIELDS:
        first_bad(field, ~(np.isfinite(bars[field]) & (bars[field] > 0)), "finite and > 0")
    for field in _AMOUNT_FIELDS:
        first_bad(field, ~(np.isfinite(bars[field]) & (bars[field] >= 0)), "finite and >= 0")
    first_bad("high", bars["high"] < bars["low"], ">= low")
    vwap = bars["vwap"]
    first_bad("vwap", ~(np.isnan(vwap) | (np.isfinite(vwap) & (vwap > 0))),
              "NaN (no trades) or finite > 0")
    return bars
