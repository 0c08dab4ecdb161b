-- End-to-end latency per minute of output time, for ticks and for candles. Quantiles are
-- picked by UNNEST ... WITH OFFSET, not quantiles[OFFSET(n)]: bqemulator 1.4 indexes an
-- aggregated array off by one (measured: OFFSET(50) of 0..100 gave 49 or 51).
SELECT minute, source, row_count,
  MAX(IF(position = 50, quantile, NULL)) AS p50_ms,
  MAX(IF(position = 95, quantile, NULL)) AS p95_ms,
  MAX(IF(position = 99, quantile, NULL)) AS p99_ms,
  max_ms
FROM (
  SELECT minute, source, COUNT(*) AS row_count,
    APPROX_QUANTILES(latency_ms, 100) AS quantiles, MAX(latency_ms) AS max_ms
  FROM (
    SELECT TIMESTAMP_TRUNC(timestamp_out, MINUTE) AS minute, 'ticks' AS source, latency_ms
    FROM `${dataset}.ticks_unique` WHERE latency_ms IS NOT NULL
    UNION ALL
    SELECT TIMESTAMP_TRUNC(timestamp_out, MINUTE) AS minute, 'candles' AS source, latency_ms
    FROM `${dataset}.candles_unique` WHERE latency_ms IS NOT NULL)
  GROUP BY minute, source),
  UNNEST(quantiles) AS quantile WITH OFFSET AS position
WHERE position IN (50, 95, 99)
GROUP BY minute, source, row_count, max_ms
