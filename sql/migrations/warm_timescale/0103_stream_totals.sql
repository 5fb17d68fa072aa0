-- depends: 0102_rollup_1m_indexes
-- Stream-wide totals per bucket (all keys together) as hierarchical continuous aggregates beside
-- the per-key ones: a series without a key reads one row per bucket. Existing raw events are
-- marked dirty so the next refresh materialises them (a migration cannot CALL a refresh).

CREATE MATERIALIZED VIEW total_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = true, timescaledb.create_group_indexes = false) AS
SELECT stream_id, time_bucket(INTERVAL '1 minute', ts) AS bucket,
       count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max
FROM events
GROUP BY stream_id, time_bucket(INTERVAL '1 minute', ts)
WITH NO DATA;

CREATE MATERIALIZED VIEW total_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = true, timescaledb.create_group_indexes = false) AS
SELECT stream_id, time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       sum(count)::bigint AS count, sum(sum) AS sum, min(min) AS min, max(max) AS max
FROM total_1m
GROUP BY stream_id, time_bucket(INTERVAL '1 hour', bucket)
WITH NO DATA;

CREATE MATERIALIZED VIEW total_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = true, timescaledb.create_group_indexes = false) AS
SELECT stream_id, time_bucket(INTERVAL '1 day', bucket) AS bucket,
       sum(count)::bigint AS count, sum(sum) AS sum, min(min) AS min, max(max) AS max
FROM total_1h
GROUP BY stream_id, time_bucket(INTERVAL '1 day', bucket)
WITH NO DATA;

CREATE INDEX total_1m_stream_bucket ON total_1m (stream_id, bucket);
CREATE INDEX total_1h_stream_bucket ON total_1h (stream_id, bucket);
CREATE INDEX total_1d_stream_bucket ON total_1d (stream_id, bucket);

INSERT INTO warm_dirty (stream_id, bucket)
SELECT DISTINCT stream_id, date_bin('1 minute', ts, timestamptz 'epoch') FROM events;
