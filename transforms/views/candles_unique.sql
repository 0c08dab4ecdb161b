-- Each revision of each job's candle once: the first copy written. A restarted job's candles
-- carry its own job_start: other rows, which candles_latest prefers.
SELECT * EXCEPT (copy_rank) FROM (
  SELECT r.*, ROW_NUMBER() OVER (
    PARTITION BY exchange, symbol, timeframe, timestamp_in, job_start, revision ORDER BY timestamp_out) AS copy_rank
  FROM `${dataset}.candles` AS r)
WHERE copy_rank = 1
