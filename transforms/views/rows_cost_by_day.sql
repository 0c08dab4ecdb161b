-- Rows, approximate bytes and the cost of writing them with either method, per day (of
-- insert) and table, before free tiers. Every copy written counts: each was billed.
SELECT day, table_name, COUNT(*) AS row_count, SUM(row_bytes) AS approx_bytes,
  SUM(GREATEST(row_bytes, ${streaming_insert_min_row_bytes})) AS billed_bytes,
  SUM(GREATEST(row_bytes, ${streaming_insert_min_row_bytes})) / (200 * 1024 * 1024)
    * ${streaming_insert_usd_per_200_mib} AS streaming_insert_usd,
  SUM(row_bytes) / (1024 * 1024 * 1024) * ${storage_write_usd_per_gib} AS storage_write_api_usd
FROM (
  ${row_bytes_per_table})
GROUP BY day, table_name
