-- How complete the candles of each day are, from their latest final revision (SPEC §3.6). A
-- missing range touching two candles counts in both, so the column is the worst candle's count,
-- not a total; NULL where the venue cannot tell.
SELECT DATE(timestamp_in) AS day, exchange, symbol, timeframe, COUNT(*) AS candle_count,
  COUNTIF(is_complete) AS complete_candles, COUNTIF(missing_trades > 0) AS candles_missing_trades,
  MAX(missing_trades) AS max_missing_trades, COUNTIF(is_partial) AS partial_candles
FROM `${dataset}.candles_latest`
WHERE is_final
GROUP BY day, exchange, symbol, timeframe
