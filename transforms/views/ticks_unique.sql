-- Each tick once, however many times it was written: the first copy (a retried append or
-- bundle writes the same key again). The partitioning column is in the key, so a filter on it
-- prunes partitions through the view.
SELECT * EXCEPT (copy_rank) FROM (
  SELECT r.*, ROW_NUMBER() OVER (
    PARTITION BY exchange, symbol, id, timestamp ORDER BY timestamp_out) AS copy_rank
  FROM `${dataset}.ticks` AS r)
WHERE copy_rank = 1
