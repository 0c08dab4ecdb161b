-- Match rate against the venues' klines per day, exchange, symbol and timeframe, from the newest
-- comparison of each candle (docs/reconcile.md): the count of each status, the match rate over
-- the candles with trades, and the earliest differing candle with its first differing field (or
-- its status when one side has no candle).
SELECT day, exchange, symbol, timeframe, COUNT(*) AS candles,
  COUNTIF(status = 'match') AS matched, COUNTIF(status = 'mismatch') AS mismatched,
  COUNTIF(status = 'missing_ours') AS missing_ours, COUNTIF(status = 'missing_venue') AS missing_venue,
  COUNTIF(status = 'empty') AS empty,
  SAFE_DIVIDE(COUNTIF(status = 'match'), COUNTIF(status != 'empty')) AS match_rate,
  MAX(IF(differs AND differing_rank = 1, timestamp_in, NULL)) AS first_difference_at,
  MAX(IF(differs AND differing_rank = 1, COALESCE(first_difference, status), NULL)) AS first_difference
FROM (
  SELECT *, ROW_NUMBER() OVER (
    PARTITION BY day, exchange, symbol, timeframe, differs ORDER BY timestamp_in) AS differing_rank
  FROM (
    SELECT r.*, DATE(timestamp_in) AS day, status IN ('mismatch', 'missing_ours', 'missing_venue') AS differs,
      ROW_NUMBER() OVER (PARTITION BY exchange, symbol, timeframe, timestamp_in
                         ORDER BY timestamp_out DESC) AS newest
    FROM `${dataset}.candle_reconciliation` AS r)
  WHERE newest = 1)
GROUP BY day, exchange, symbol, timeframe
