"""HFT features over a candle series (SPEC §5): pure numpy functions shared by the streaming
stateful DoFn and the vectorised batch path."""
from __future__ import annotations

# Output columns, in the order they appear in rows and in the BigQuery schema.
FEATURE_NAMES: tuple[str, ...] = (
    "sma_5", "sma_10", "sma_20", "ema_5", "ema_10", "ema_20", "wma_5",
    "momentum_3", "momentum_5", "velocity", "acceleration",
    "volume_sma_5", "volume_ratio", "vwap_deviation", "vwap_5",
    "return_1", "log_return", "volatility_5", "volatility_10", "hl_range",
    "trade_intensity", "avg_trade_size", "price_impact", "spread_proxy", "buy_ratio",
    "rsi_5", "bb_position", "macd", "macd_signal", "macd_hist",
)
