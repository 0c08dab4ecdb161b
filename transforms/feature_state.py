"""The incremental path of the HFT features: one candle at a time from a small frozen
``FeatureState``, for the streaming DoFn. It mirrors ``compute_features``' kernels operation for
operation, so both give the same numbers bit for bit (see ``transforms/features.py``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from transforms.features import (CLOSE_HISTORY, EMA_PERIODS, FEATURE_NAMES, LOG_RETURN_HISTORY,
                                 MOMENTUM_PERIODS, RSI_PERIOD, SMA_PERIODS, VOLATILITY_PERIODS,
                                 VOLUME_PERIOD, WMA_PERIOD, checked_candle, checked_timeframe)
from transforms.indicators import (BB_NB_DEV, BB_PERIOD, MACD_FAST, MACD_FIRST_INDEX,
                                   MACD_LINE_START, MACD_SIGNAL, MACD_SLOW, accumulate_change,
                                   corwin_schultz, ema_next, ema_smoothing, rsi_value,
                                   sequential_sum, wilder_next)


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




def _std(values: tuple[float, ...], ddof: int) -> float:
    """Scalar twin of rolling_std for one window."""
    if max(values) == min(values):
        return 0.0
    mean = sequential_sum(values) / len(values)
    deviation = values[0] - mean
    squares = deviation * deviation
    for value in values[1:]:
        deviation = value - mean
        squares += deviation * deviation
    return math.sqrt(squares / (len(values) - ddof))






def _ratio(numerator: float, denominator: float) -> float:
    """Scalar twin of safe_divide."""
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
    seconds = checked_timeframe(timeframe_seconds)
    bar = checked_candle(candle)
    index = state.index
    close = bar["close"]
    closes = (state.closes + (close,))[-CLOSE_HISTORY:]
    volumes = (state.volumes + (bar["volume"],))[-VOLUME_PERIOD:]
    quote_volumes = (state.quote_volumes + (bar["quote_volume"],))[-VOLUME_PERIOD:]
    previous_close = state.closes[-1] if state.closes else math.nan
    values: dict[str, float] = {}

    for period in SMA_PERIODS:
        values[f"sma_{period}"] = (sequential_sum(closes[-period:]) / period
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

    volume_sma = sequential_sum(volumes) / VOLUME_PERIOD if index >= VOLUME_PERIOD - 1 else math.nan
    values["volume_sma_5"] = volume_sma
    values["volume_ratio"] = _ratio(bar["volume"], volume_sma)
    values["vwap_deviation"] = _ratio(close - bar["vwap"], bar["vwap"])
    values["vwap_5"] = (_ratio(sequential_sum(quote_volumes), sequential_sum(volumes))
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
        values["spread_proxy"] = float(corwin_schultz(state.hl_log_sq + hl_log_sq,
                                                       pair_range * pair_range))
    else:
        values["spread_proxy"] = math.nan
    values["buy_ratio"] = _ratio(bar["buy_volume"], bar["volume"])

    rsi_gain, rsi_loss, values[f"rsi_{RSI_PERIOD}"] = _next_rsi(state, close - previous_close)
    if index >= BB_PERIOD - 1:
        window = closes[-BB_PERIOD:]
        middle = sequential_sum(window) / BB_PERIOD
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
        return sequential_sum(closes[-period:]) / period
    return ema_next(previous, closes[-1], ema_smoothing(period))


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
        gain, loss = accumulate_change(gain, loss, change)
        return gain, loss, math.nan
    if index == RSI_PERIOD:
        gain, loss = accumulate_change(gain, loss, change)
        gain /= RSI_PERIOD
        loss /= RSI_PERIOD
    else:
        gain, loss = wilder_next(gain, loss, change, RSI_PERIOD)
    return gain, loss, rsi_value(gain, loss)


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
        fast = sequential_sum(closes[-MACD_FAST:]) / MACD_FAST
    else:
        fast = ema_next(fast, close, ema_smoothing(MACD_FAST))
        slow = ema_next(slow, close, ema_smoothing(MACD_SLOW))
    line = fast - slow
    if index < MACD_FIRST_INDEX:
        signal_seed = line if index == MACD_LINE_START else signal_seed + line
        return slow_seed, fast, slow, signal_seed, signal, nothing
    if index == MACD_FIRST_INDEX:
        signal = (signal_seed + line) / MACD_SIGNAL
    else:
        signal = ema_next(signal, line, ema_smoothing(MACD_SIGNAL))
    return slow_seed, fast, slow, signal_seed, signal, (line, signal, line - signal)
