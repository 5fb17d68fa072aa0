-- The cold tier's Hive tables over the Parquet layout of tiers/parquet_layout.py.
-- {catalog} and {schema} are validated, quoted identifiers; `?` is the root location
-- (local:///<path under Trino's local.location>), bound as a parameter.
-- Partition columns come last, in partitioned_by order; folders are named col=value.
-- Value-sorted copies (topk_by_*) are read by the tier directly and have no tables.
-- sum_lo (the sums' low parts) is NULL in files written before it existed (read by name).

CREATE SCHEMA IF NOT EXISTS {catalog}.{schema} WITH (location = ?);

CREATE TABLE IF NOT EXISTS {catalog}.{schema}."events" (
    ts bigint, key_id bigint, key varchar, value double, id varchar,
    tenant varchar, stream varchar, day varchar
) WITH (format = 'PARQUET', partitioned_by = ARRAY['tenant', 'stream', 'day'],
        external_location = ? || '/events');

CREATE TABLE IF NOT EXISTS {catalog}.{schema}."rollup_1h" (
    bucket bigint, key_id bigint, "count" bigint, "sum" double, "min" double, "max" double, sum_lo double,
    tenant varchar, stream varchar, day varchar
) WITH (format = 'PARQUET', partitioned_by = ARRAY['tenant', 'stream', 'day'],
        external_location = ? || '/rollup_1h');

CREATE TABLE IF NOT EXISTS {catalog}.{schema}."rollup_1d" (
    bucket bigint, key_id bigint, "count" bigint, "sum" double, "min" double, "max" double, sum_lo double,
    tenant varchar, stream varchar, day varchar
) WITH (format = 'PARQUET', partitioned_by = ARRAY['tenant', 'stream', 'day'],
        external_location = ? || '/rollup_1d');

CREATE TABLE IF NOT EXISTS {catalog}.{schema}."rollup_1w" (
    bucket bigint, key_id bigint, "count" bigint, "sum" double, "min" double, "max" double, sum_lo double,
    tenant varchar, stream varchar, week varchar
) WITH (format = 'PARQUET', partitioned_by = ARRAY['tenant', 'stream', 'week'],
        external_location = ? || '/rollup_1w');

CREATE TABLE IF NOT EXISTS {catalog}.{schema}."rollup_1mo" (
    bucket bigint, key_id bigint, "count" bigint, "sum" double, "min" double, "max" double, sum_lo double,
    tenant varchar, stream varchar, month varchar
) WITH (format = 'PARQUET', partitioned_by = ARRAY['tenant', 'stream', 'month'],
        external_location = ? || '/rollup_1mo');

-- tables created before sum_lo existed gain it (files without it read NULL: 0)
ALTER TABLE IF EXISTS {catalog}.{schema}."rollup_1h" ADD COLUMN IF NOT EXISTS sum_lo double;
ALTER TABLE IF EXISTS {catalog}.{schema}."rollup_1d" ADD COLUMN IF NOT EXISTS sum_lo double;
ALTER TABLE IF EXISTS {catalog}.{schema}."rollup_1w" ADD COLUMN IF NOT EXISTS sum_lo double;
ALTER TABLE IF EXISTS {catalog}.{schema}."rollup_1mo" ADD COLUMN IF NOT EXISTS sum_lo double;
