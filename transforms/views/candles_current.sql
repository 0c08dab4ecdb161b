-- The newest candle of every exchange/symbol/timeframe (a live board).
SELECT * EXCEPT (recency_rank) FROM (
  SELECT l.*, ROW_NUMBER() OVER (
    PARTITION BY exchange, symbol, timeframe ORDER BY timestamp_in DESC) AS recency_rank
  FROM `${dataset}.candles_latest` AS l)
WHERE recency_rank = 1
