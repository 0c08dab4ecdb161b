"""HFT features over a candle series (SPEC §5): pure numpy functions shared by the streaming
stateful DoFn and the vectorised batch path.

Two APIs that must give the same numbers:

* ``compute_features(candles, timeframe_seconds)``: vectorised over a whole contiguous series
  of one key (gap candles included), for batch back-fills and replays.
* ``initial_state()`` / ``step(state, candle, timeframe_seconds)``: one candle at a time from a
  small frozen ``FeatureState``, for the streaming DoFn. ``step`` never mutates its input, so
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
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

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
BB_PERIOD = 20
BB_NB_DEV = 2.0
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
# TA-Lib starts both MACD EMAs on the slow one's first bar, and the signal EMA on the first bar
# where it has MACD_SIGNAL MACD values; it outputs nothing (here: NaN) before that.
MACD_LINE_START = MACD_SLOW - 1
MACD_FIRST_INDEX = MACD_LINE_START + MACD_SIGNAL - 1

# How much history step() keeps: the longest close window (SMA/BBANDS 20; momentum needs 6).
CLOSE_HISTORY = max(max(SMA_PERIODS), BB_PERIOD, max(MOMENTUM_PERIODS) + 1, MACD_FAST)
LOG_RETURN_HISTORY = max(VOLATILITY_PERIODS)

# TA-Lib's TA_IS_ZERO band (TA_EPSILON in 0.8): RSI is 0 when avg gain + avg loss is inside it.
TA_EPSILON = 1e-14
# Corwin & Schultz (2012) constant 3 − 2√2.
_CS_DENOMINATOR = 3.0 - 2.0 * math.sqrt(2.0)

_PRICE_FIELDS = ("open", "high", "low", "close")
_AMOUNT_FIELDS = ("volume", "quote_volume", "trades", "buy_volume")


def ema_smoothing(period: int) -> float:
    """TA-Lib's PER_TO_K: the EMA weight of the newest value."""
    return 2.0 / (period + 1)


def _ema_next(previous: float, value: float, k: float) -> float:
    """One EMA update in TA-Lib's operation order (``((x − prev)·k) + prev``)."""
    return (value - previous) * k + previous


def _rsi_value(avg_gain: float, avg_loss: float) -> float:
    """TA-Lib RSI output: 100·gain/(gain+loss), 0 when the sum is within TA_IS_ZERO."""
    total = avg_gain + avg_loss
    if -TA_EPSILON < total < TA_EPSILON:
        return 0.0
    return 100.0 * (avg_gain / total)


# --------------------------------------------------------------------------------------------
# Vectorised kernels (whole series). Window sums run column by column so that every window is
# summed oldest-first, exactly as step() sums its ring buffer.
# --------------------------------------------------------------------------------------------

def _windows(x: np.ndarray, period: int) -> np.ndarray:
    return sliding_window_view(x, period)


def _window_sums(windows: np.ndarray) -> np.ndarray:
    total = windows[:, 0].copy()
    for j in range(1, windows.shape[1]):
        total += windows[:, j]
    return total


def _aligned(values: np.ndarray, length: int) -> np.ndarray:
    """Right-align per-window results on a series of ``length``; NaN where no full window."""
    out = np.full(length, np.nan)
    if values.size:
        out[length - values.size:] = values
    return out


def rolling_sum(x: np.ndarray, period: int) -> np.ndarray:
    """Sum of the last ``period`` values at each index (NaN for the first period−1)."""
    if x.size < period:
        return np.full(x.size, np.nan)
    return _aligned(_window_sums(_windows(x, period)), x.size)


def sma(x: np.ndarray, period: int) -> np.ndarray:
    """Simple moving average (TA-Lib SMA)."""
    return rolling_sum(x, period) / period


def wma(x: np.ndarray, period: int) -> np.ndarray:
    """Linearly weighted moving average, weights 1..period newest heaviest (TA-Lib WMA)."""
    if x.size < period:
        return np.full(x.size, np.nan)
    windows = _windows(x, period)
    total = 1.0 * windows[:, 0]
    for j in range(1, period):
        total += float(j + 1) * windows[:, j]
    return _aligned(total / (period * (period + 1) / 2.0), x.size)


def rolling_std(x: np.ndarray, period: int, ddof: int) -> np.ndarray:
    """Two-pass standard deviation over the last ``period`` values; exactly 0 on a flat window.

    Two-pass (mean first) rather than E[x²]−E[x]² because prices ~1e5 with moves ~1e-2 would
    lose every significant digit to cancellation. A flat window answers 0 explicitly: its mean
    can be off by an ulp, which would otherwise leave a 1e-13 "deviation" (TA-Lib 0.8 also
    answers exactly 0 there). NaN anywhere in a window gives NaN.
    """
    if x.size < period:
        return np.full(x.size, np.nan)
    windows = _windows(x, period)
    mean = _window_sums(windows) / period
    deviation = windows[:, 0] - mean
    squares = deviation * deviation
    for j in range(1, period):
        deviation = windows[:, j] - mean
        squares += deviation * deviation
    std = np.sqrt(squares / (period - ddof))
    std[windows.max(axis=1) == windows.min(axis=1)] = 0.0
    return _aligned(std, x.size)


def ema(x: np.ndarray, period: int) -> np.ndarray:
    """TA-Lib EMA: seeded with the SMA of the first ``period`` values, first value at period−1."""
    out = np.full(x.size, np.nan)
    if x.size < period:
        return out
    values = x.tolist()
    k = ema_smoothing(period)
    current = _sequential_sum(values[:period]) / period
    out[period - 1] = current
    for t in range(period, len(values)):
        current = _ema_next(current, values[t], k)
        out[t] = current
    return out


def rsi(x: np.ndarray, period: int) -> np.ndarray:
    """TA-Lib RSI (Wilder): seeded by the mean gain/loss of the first ``period`` changes."""
    out = np.full(x.size, np.nan)
    if x.size <= period:
        return out
    values = x.tolist()
    gain = loss = 0.0
    for t in range(1, period + 1):
        gain, loss = _accumulate_change(gain, loss, values[t] - values[t - 1])
    gain /= period
    loss /= period
    out[period] = _rsi_value(gain, loss)
    for t in range(period + 1, len(values)):
        gain, loss = _wilder_next(gain, loss, values[t] - values[t - 1], period)
        out[t] = _rsi_value(gain, loss)
    return out


def macd(x: np.ndarray, fast: int = MACD_FAST, slow: int = MACD_SLOW,
         signal: int = MACD_SIGNAL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TA-Lib MACD: both EMAs start on bar slow−1 (the fast one seeded with the SMA of the
    ``fast`` closes ending there); line, signal and histogram are all NaN before the signal
    exists (bar slow+signal−2), as TA-Lib outputs nothing there."""
    line_start = slow - 1
    first = line_start + signal - 1
    line_out = np.full(x.size, np.nan)
    signal_out = np.full(x.size, np.nan)
    if x.size <= first:
        return line_out, signal_out, line_out - signal_out
    values = x.tolist()
    k_fast, k_slow, k_signal = ema_smoothing(fast), ema_smoothing(slow), ema_smoothing(signal)
    fast_ema = _sequential_sum(values[line_start - fast + 1:line_start + 1]) / fast
    slow_ema = _sequential_sum(values[:line_start + 1]) / slow
    lines = [fast_ema - slow_ema]
    for t in range(line_start + 1, first + 1):
        fast_ema = _ema_next(fast_ema, values[t], k_fast)
        slow_ema = _ema_next(slow_ema, values[t], k_slow)
        lines.append(fast_ema - slow_ema)
    signal_ema = _sequential_sum(lines) / signal
    line_out[first], signal_out[first] = lines[-1], signal_ema
    for t in range(first + 1, len(values)):
        fast_ema = _ema_next(fast_ema, values[t], k_fast)
        slow_ema = _ema_next(slow_ema, values[t], k_slow)
        line = fast_ema - slow_ema
        signal_ema = _ema_next(signal_ema, line, k_signal)
        line_out[t], signal_out[t] = line, signal_ema
    return line_out, signal_out, line_out - signal_out


def bollinger_bands(x: np.ndarray, period: int = BB_PERIOD,
                    nb_dev: float = BB_NB_DEV) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TA-Lib BBANDS with an SMA middle band and population stdev: (upper, middle, lower)."""
    middle = sma(x, period)
    width = nb_dev * rolling_std(x, period, ddof=0)
    return middle + width, middle, middle - width


def _lagged(x: np.ndarray, lag: int) -> np.ndarray:
    """x shifted ``lag`` bars into the future (x[t−lag] at t), NaN where there is no past."""
    out = np.full(x.size, np.nan)
    if x.size > lag:
        out[lag:] = x[:-lag]
    return out


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator/denominator, NaN where the denominator is 0 or NaN (an undefined feature)."""
    out = np.full(numerator.shape, np.nan)
    defined = (denominator != 0) & ~np.isnan(denominator)
    np.divide(numerator, denominator, out=out, where=defined)
    return out


def _corwin_schultz(beta: np.ndarray | float, gamma: np.ndarray | float) -> np.ndarray:
    """Corwin–Schultz spread from β (Σ of the two ln(H/L)²) and γ (ln(max H/min L)²), 0 when
    negative. Shared by both paths so they run the very same numpy operations."""
    alpha = (np.sqrt(2.0 * beta) - np.sqrt(beta)) / _CS_DENOMINATOR - np.sqrt(gamma / _CS_DENOMINATOR)
    growth = np.exp(alpha)
    return np.maximum(2.0 * (growth - 1.0) / (1.0 + growth), 0.0)


def compute_features(candles: Mapping[str, np.ndarray],
                     timeframe_seconds: float) -> dict[str, np.ndarray]:
    """All FEATURE_NAMES over a contiguous candle series of one key (gap candles included).

    ``candles`` holds equal-length float arrays for CANDLE_FIELDS (vwap NaN when no trades).
    Returns one float64 array per feature, NaN where history is short or the value undefined.
    Raises ValueError on malformed input, naming the field and the first bad index.
    """
    seconds = _checked_timeframe(timeframe_seconds)
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
        features[f"momentum_{period}"] = close / _lagged(close, period) - 1.0
    previous_close = _lagged(close, 1)
    velocity = (close - previous_close) / seconds
    features["velocity"] = velocity
    features["acceleration"] = velocity - _lagged(velocity, 1)

    volume_sma = sma(volume, VOLUME_PERIOD)
    features["volume_sma_5"] = volume_sma
    features["volume_ratio"] = _safe_divide(volume, volume_sma)
    features["vwap_deviation"] = _safe_divide(close - bars["vwap"], bars["vwap"])
    features["vwap_5"] = _safe_divide(rolling_sum(quote_volume, VOLUME_PERIOD),
                                      rolling_sum(volume, VOLUME_PERIOD))

    log_return = np.log(close / previous_close)
    features["return_1"] = close / previous_close - 1.0
    features["log_return"] = log_return
    for period in VOLATILITY_PERIODS:
        features[f"volatility_{period}"] = rolling_std(log_return, period, ddof=1)
    features["hl_range"] = (high - low) / close

    features["trade_intensity"] = trades / seconds
    features["avg_trade_size"] = _safe_divide(volume, trades)
    features["price_impact"] = _safe_divide(np.abs(np.log(close / open_)), quote_volume)
    spread = np.full(size, np.nan)
    if size > 1:
        hl_log = np.log(high / low)
        hl_log_sq = hl_log * hl_log
        pair_range = np.log(np.maximum(high[1:], high[:-1]) / np.minimum(low[1:], low[:-1]))
        spread[1:] = _corwin_schultz(hl_log_sq[:-1] + hl_log_sq[1:], pair_range * pair_range)
    features["spread_proxy"] = spread
    features["buy_ratio"] = _safe_divide(bars["buy_volume"], volume)

    features[f"rsi_{RSI_PERIOD}"] = rsi(close, RSI_PERIOD)
    upper, _, lower = bollinger_bands(close)
    features["bb_position"] = _safe_divide(close - lower, upper - lower)
    features["macd"], features["macd_signal"], features["macd_hist"] = macd(close)
    return features


# --------------------------------------------------------------------------------------------
# Incremental path (one candle at a time), mirroring the kernels above operation for operation.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureState:
    """What step() needs from the past of one key: bounded ring buffers (oldest first) and the
    recursive TA-Lib states. Frozen and made of floats/tuples so it pickles into Beam state and
    older copies stay valid for replaying a corrected candle."""

    index: int = 0  # position of the NEXT candle in the key's series
    closes: tuple[float, ...] = ()  # last CLOSE_HISTORY closes
    volumes: tuple[float, ...] = ()  # last VOLUME_PERIOD volumes
    quote_volumes: tuple[float, ...] = ()  # last VOLUME_PERIOD quote volumes
    log_returns: tuple[float, ...] = ()  # last LOG_RETURN_HISTORY log returns
    velocity: float = math.nan  # previous candle's
    high: float = math.nan  # previous candle's
    low: float = math.nan  # previous candle's
    hl_log_sq: float = math.nan  # previous candle's ln(H/L)²
    emas: tuple[float, ...] = (math.nan,) * len(EMA_PERIODS)
    rsi_gain: float = 0.0  # running sum until seeded, then Wilder average
    rsi_loss: float = 0.0
    macd_slow_seed: float = 0.0  # running sum of the first MACD_SLOW closes
    macd_fast: float = math.nan
    macd_slow: float = math.nan
    macd_signal_seed: float = 0.0  # running sum of the first MACD_SIGNAL MACD values
    macd_signal: float = math.nan


def initial_state() -> FeatureState:
    """State of a key that has seen no candle yet."""
    return FeatureState()


def _sequential_sum(values: list[float] | tuple[float, ...]) -> float:
    """Oldest-first sum; the builtin sum() is compensated on 3.12+, numpy's is pairwise."""
    total = values[0]
    for value in values[1:]:
        total += value
    return total


def _std(values: tuple[float, ...], ddof: int) -> float:
    """Scalar twin of rolling_std for one window."""
    if max(values) == min(values):
        return 0.0
    mean = _sequential_sum(values) / len(values)
    deviation = values[0] - mean
    squares = deviation * deviation
    for value in values[1:]:
        deviation = value - mean
        squares += deviation * deviation
    return math.sqrt(squares / (len(values) - ddof))


def _accumulate_change(gain: float, loss: float, change: float) -> tuple[float, float]:
    if change < 0.0:
        return gain, loss - change
    return gain + change, loss


def _wilder_next(gain: float, loss: float, change: float, period: int) -> tuple[float, float]:
    """One Wilder smoothing step in TA-Lib's order: ×(n−1), add today's move, ÷n."""
    gain, loss = _accumulate_change(gain * float(period - 1), loss * float(period - 1), change)
    return gain / period, loss / period


def _ratio(numerator: float, denominator: float) -> float:
    """Scalar twin of _safe_divide."""
    if denominator == 0.0 or math.isnan(denominator):
        return math.nan
    return numerator / denominator


def features_to_row(values: Mapping[str, float]) -> dict[str, float | None]:
    """Feature values as a BigQuery-ready row fragment: plain floats, NaN (or an overflowed
    ratio, as in compute_features) → None."""
    row: dict[str, float | None] = {}
    for name in FEATURE_NAMES:
        value = float(values[name])
        row[name] = value if math.isfinite(value) else None
    return row


def step(state: FeatureState, candle: Mapping[str, float | None],
         timeframe_seconds: float) -> tuple[FeatureState, dict[str, float | None]]:
    """Advance one key by one candle: (new state, features of that candle; None = NULL).

    O(CLOSE_HISTORY); ``state`` is left untouched. Raises ValueError on a malformed candle.
    """
    seconds = _checked_timeframe(timeframe_seconds)
    bar = _checked_candle(candle)
    index = state.index
    close = bar["close"]
    closes = (state.closes + (close,))[-CLOSE_HISTORY:]
    volumes = (state.volumes + (bar["volume"],))[-VOLUME_PERIOD:]
    quote_volumes = (state.quote_volumes + (bar["quote_volume"],))[-VOLUME_PERIOD:]
    previous_close = state.closes[-1] if state.closes else math.nan
    values: dict[str, float] = {}

    for period in SMA_PERIODS:
        values[f"sma_{period}"] = (_sequential_sum(closes[-period:]) / period
                                   if index >= period - 1 else math.nan)
    emas = tuple(_next_ema(state.emas[i], closes, index, period)
                 for i, period in enumerate(EMA_PERIODS))
    for period, value in zip(EMA_PERIODS, emas):
        values[f"ema_{period}"] = value
    values[f"wma_{WMA_PERIOD}"] = _wma(closes, index)
    for period in MOMENTUM_PERIODS:
        values[f"momentum_{period}"] = close / closes[-1 - period] - 1.0 if index >= period else math.nan
    velocity = (close - previous_close) / seconds
    values["velocity"] = velocity
    values["acceleration"] = velocity - state.velocity

    volume_sma = _sequential_sum(volumes) / VOLUME_PERIOD if index >= VOLUME_PERIOD - 1 else math.nan
    values["volume_sma_5"] = volume_sma
    values["volume_ratio"] = _ratio(bar["volume"], volume_sma)
    values["vwap_deviation"] = _ratio(close - bar["vwap"], bar["vwap"])
    values["vwap_5"] = (_ratio(_sequential_sum(quote_volumes), _sequential_sum(volumes))
                        if index >= VOLUME_PERIOD - 1 else math.nan)

    log_returns = state.log_returns
    if index >= 1:
        log_return = float(np.log(close / previous_close))
        log_returns = (log_returns + (log_return,))[-LOG_RETURN_HISTORY:]
        values["return_1"] = close / previous_close - 1.0
        values["log_return"] = log_return
    else:
        values["return_1"] = values["log_return"] = math.nan
    for period in VOLATILITY_PERIODS:
        values[f"volatility_{period}"] = (_std(log_returns[-period:], ddof=1)
                                          if index >= period else math.nan)
    values["hl_range"] = (bar["high"] - bar["low"]) / close

    values["trade_intensity"] = bar["trades"] / seconds
    values["avg_trade_size"] = _ratio(bar["volume"], bar["trades"])
    values["price_impact"] = _ratio(abs(float(np.log(close / bar["open"]))), bar["quote_volume"])
    hl_log = float(np.log(bar["high"] / bar["low"]))
    hl_log_sq = hl_log * hl_log
    if index >= 1:
        pair_range = float(np.log(max(bar["high"], state.high) / min(bar["low"], state.low)))
        values["spread_proxy"] = float(_corwin_schultz(state.hl_log_sq + hl_log_sq,
                                                       pair_range * pair_range))
    else:
        values["spread_proxy"] = math.nan
    values["buy_ratio"] = _ratio(bar["buy_volume"], bar["volume"])

    rsi_gain, rsi_loss, values[f"rsi_{RSI_PERIOD}"] = _next_rsi(state, close - previous_close)
    if index >= BB_PERIOD - 1:
        window = closes[-BB_PERIOD:]
        middle = _sequential_sum(window) / BB_PERIOD
        width = BB_NB_DEV * _std(window, ddof=0)
        values["bb_position"] = _ratio(close - (middle - width), (middle + width) - (middle - width))
    else:
        values["bb_position"] = math.nan
    macd_state = _next_macd(state, closes, close)
    values["macd"], values["macd_signal"], values["macd_hist"] = macd_state[-1]

    new_state = FeatureState(
        index=index + 1, closes=closes, volumes=volumes, quote_volumes=quote_volumes,
        log_returns=log_returns, velocity=velocity, high=bar["high"], low=bar["low"],
        hl_log_sq=hl_log_sq, emas=emas, rsi_gain=rsi_gain, rsi_loss=rsi_loss,
        macd_slow_seed=macd_state[0], macd_fast=macd_state[1], macd_slow=macd_state[2],
        macd_signal_seed=macd_state[3], macd_signal=macd_state[4],
    )
    return new_state, features_to_row(values)


def _next_ema(previous: float, closes: tuple[float, ...], index: int, period: int) -> float:
    if index < period - 1:
        return math.nan
    if index == period - 1:  # the ring buffer still holds every close so far
        return _sequential_sum(closes[-period:]) / period
    return _ema_next(previous, closes[-1], ema_smoothing(period))


def _wma(closes: tuple[float, ...], index: int) -> float:
    if index < WMA_PERIOD - 1:
        return math.nan
    window = closes[-WMA_PERIOD:]
    total = 1.0 * window[0]
    for j in range(1, WMA_PERIOD):
        total += float(j + 1) * window[j]
    return total / (WMA_PERIOD * (WMA_PERIOD + 1) / 2.0)


def _next_rsi(state: FeatureState, change: float) -> tuple[float, float, float]:
    """(gain, loss, rsi) after this candle; sums raw moves until the seed bar, then Wilder."""
    index, gain, loss = state.index, state.rsi_gain, state.rsi_loss
    if index == 0:
        return gain, loss, math.nan
    if index < RSI_PERIOD:
        gain, loss = _accumulate_change(gain, loss, change)
        return gain, loss, math.nan
    if index == RSI_PERIOD:
        gain, loss = _accumulate_change(gain, loss, change)
        gain /= RSI_PERIOD
        loss /= RSI_PERIOD
    else:
        gain, loss = _wilder_next(gain, loss, change, RSI_PERIOD)
    return gain, loss, _rsi_value(gain, loss)


def _next_macd(state: FeatureState, closes: tuple[float, ...], close: float
               ) -> tuple[float, float, float, float, float, tuple[float, float, float]]:
    """(slow seed sum, fast EMA, slow EMA, signal seed sum, signal EMA, (line, signal, hist))."""
    index = state.index
    slow_seed, fast, slow = state.macd_slow_seed, state.macd_fast, state.macd_slow
    signal_seed, signal = state.macd_signal_seed, state.macd_signal
    nothing = (math.nan, math.nan, math.nan)
    if index < MACD_LINE_START:
        return slow_seed + close, fast, slow, signal_seed, signal, nothing
    if index == MACD_LINE_START:
        slow = (slow_seed + close) / MACD_SLOW
        fast = _sequential_sum(closes[-MACD_FAST:]) / MACD_FAST
    else:
        fast = _ema_next(fast, close, ema_smoothing(MACD_FAST))
        slow = _ema_next(slow, close, ema_smoothing(MACD_SLOW))
    line = fast - slow
    if index < MACD_FIRST_INDEX:
        signal_seed = line if index == MACD_LINE_START else signal_seed + line
        return slow_seed, fast, slow, signal_seed, signal, nothing
    if index == MACD_FIRST_INDEX:
        signal = (signal_seed + line) / MACD_SIGNAL
    else:
        signal = _ema_next(signal, line, ema_smoothing(MACD_SIGNAL))
    return slow_seed, fast, slow, signal_seed, signal, (line, signal, line - signal)


# --------------------------------------------------------------------------------------------
# Input checks: a bad candle is a clear ValueError (the DoFn dead-letters it), never a NaN that
# silently poisons every later EMA of the key.
# --------------------------------------------------------------------------------------------

def _checked_timeframe(timeframe_seconds: float) -> float:
    seconds = float(timeframe_seconds)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"timeframe_seconds must be a finite positive number, got {timeframe_seconds!r}")
    return seconds


def _checked_candle(candle: Mapping[str, float | None]) -> dict[str, float]:
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
