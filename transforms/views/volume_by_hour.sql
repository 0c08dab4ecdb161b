-- Hourly volume from the latest revision of the 1m candles (present in every default
-- run; ticks are only stored in ticks/both mode).
SELECT TIMESTAMP_TRUNC(timestamp_in, HOUR) AS hour, exchange, symbol,
  SUM(volume) AS volume, SUM(quote_volume) AS quote_volume,
  SAFE_DIVIDE(SUM(quote_volume), SUM(volume)) AS vwap,
  SUM(trades) AS trades, SUM(buy_volume) AS buy_volume, SUM(sell_volume) AS sell_volume,
  COUNT(*) AS candle_count
FROM `${dataset}.candles_latest`
WHERE timeframe = '1m'
GROUP BY hour, exchange, symbol
