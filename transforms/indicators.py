"""Indicator kernels over whole numpy series, in TA-Lib 0.8's conventions (seeding, first valid
index, RSI's zero test) and operation order, so the one-candle-at-a-time path
(``transforms/feature_state.py``) can mirror them bit for bit. Window sums run column by column:
every window is summed oldest-first, as ``step`` sums its ring buffer."""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

BB_PERIOD = 20
BB_NB_DEV = 2.0
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
# TA-Lib starts both MACD EMAs on the slow one's first bar, and the signal EMA on the first bar
# where it has MACD_SIGNAL MACD values; it outputs nothing (here: NaN) before that.
MACD_LINE_START = MACD_SLOW - 1
MACD_FIRST_INDEX = MACD_LINE_START + MACD_SIGNAL - 1

# TA-Lib's TA_IS_ZERO band (TA_EPSILON in 0.8): RSI is 0 when avg gain + avg loss is inside it.
TA_EPSILON = 1e-14
# Corwin & Schultz (2012) constant 3 − 2√2.
CS_DENOMINATOR = 3.0 - 2.0 * math.sqrt(2.0)


def ema_smoothing(period: int) -> float:
    """TA-Lib's PER_TO_K: the EMA weight of the newest value."""
    return 2.0 / (period + 1)


def ema_next(previous: float, value: float, k: float) -> float:
    """One EMA update in TA-Lib's operation order (``((x − prev)·k) + prev``)."""
    return (value - previous) * k + previous


def rsi_value(avg_gain: float, avg_loss: float) -> float:
    """TA-Lib RSI output: 100·gain/(gain+loss), 0 when the sum is within TA_IS_ZERO."""
    total = avg_gain + avg_loss
    if -TA_EPSILON < total < TA_EPSILON:
        return 0.0
    return 100.0 * (avg_gain / total)



def sequential_sum(values: list[float] | tuple[float, ...]) -> float:
    """Oldest-first sum; the builtin sum() is compensated on 3.12+, numpy's is pairwise."""
    total = values[0]
    for value in values[1:]:
        total += value
    return total


def accumulate_change(gain: float, loss: float, change: float) -> tuple[float, float]:
    if change < 0.0:
        return gain, loss - change
    return gain + change, loss


def wilder_next(gain: float, loss: float, change: float, period: int) -> tuple[float, float]:
    """One Wilder smoothing step in TA-Lib's order: ×(n−1), add today's move, ÷n."""
    gain, loss = accumulate_change(gain * float(period - 1), loss * float(period - 1), change)
    return gain / period, loss / period



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
    current = sequential_sum(values[:period]) / period
    out[period - 1] = current
    for t in range(period, len(values)):
        current = ema_next(current, values[t], k)
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
        gain, loss = accumulate_change(gain, loss, values[t] - values[t - 1])
    gain /= period
    loss /= period
    out[period] = rsi_value(gain, loss)
    for t in range(period + 1, len(values)):
        gain, loss = wilder_next(gain, loss, values[t] - values[t - 1], period)
        out[t] = rsi_value(gain, loss)
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
    fast_ema = sequential_sum(values[line_start - fast + 1:line_start + 1]) / fast
    slow_ema = sequential_sum(values[:line_start + 1]) / slow
    lines = [fast_ema - slow_ema]
    for t in range(line_start + 1, first + 1):
        fast_ema = ema_next(fast_ema, values[t], k_fast)
        slow_ema = ema_next(slow_ema, values[t], k_slow)
        lines.append(fast_ema - slow_ema)
    signal_ema = sequential_sum(lines) / signal
    line_out[first], signal_out[first] = lines[-1], signal_ema
    for t in range(first + 1, len(values)):
        fast_ema = ema_next(fast_ema, values[t], k_fast)
        slow_ema = ema_next(slow_ema, values[t], k_slow)
        line = fast_ema - slow_ema
        signal_ema = ema_next(signal_ema, line, k_signal)
        line_out[t], signal_out[t] = line, signal_ema
    return line_out, signal_out, line_out - signal_out


def bollinger_bands(x: np.ndarray, period: int = BB_PERIOD,
                    nb_dev: float = BB_NB_DEV) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TA-Lib BBANDS with an SMA middle band and population stdev: (upper, middle, lower)."""
    middle = sma(x, period)
    width = nb_dev * rolling_std(x, period, ddof=0)
    return middle + width, middle, middle - width


def lagged(x: np.ndarray, lag: int) -> np.ndarray:
    """x shifted ``lag`` bars into the future (x[t−lag] at t), NaN where there is no past."""
    out = np.full(x.size, np.nan)
    if x.size > lag:
        out[lag:] = x[:-lag]
    return out


def safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator/denominator, NaN where the denominator is 0 or NaN (an undefined feature)."""
    out = np.full(numerator.shape, np.nan)
    defined = (denominator != 0) & ~np.isnan(denominator)
    np.divide(numerator, denominator, out=out, where=defined)
    return out


def corwin_schultz(beta: np.ndarray | float, gamma: np.ndarray | float) -> np.ndarray:
    """Corwin–Schultz spread from β (Σ of the two ln(H/L)²) and γ (ln(max H/min L)²), 0 when
    negative. Shared by both paths so they run the very same numpy operations."""
    alpha = (np.sqrt(2.0 * beta) - np.sqrt(beta)) / CS_DENOMINATOR - np.sqrt(gamma / CS_DENOMINATOR)
    growth = np.exp(alpha)
    return np.maximum(2.0 * (growth - 1.0) / (1.0 + growth), 0.0)
