-- One row per candle: the newest job's highest revision (corrections of late ticks, and a
-- restarted job's replay, supersede).
SELECT * EXCEPT (revision_rank) FROM (
  SELECT c.*, ROW_NUMBER() OVER (
    PARTITION BY exchange, symbol, timeframe, timestamp_in
    ORDER BY job_start DESC, revision DESC) AS revision_rank
  FROM `${dataset}.candles_unique` AS c)
WHERE revision_rank = 1
