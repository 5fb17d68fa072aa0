-- depends: 0004_flush_state
-- Warm tier, timescale mode: raw events in a hypertable (daily chunks) and hierarchical
-- continuous aggregates 1m -> 1h -> 1d. No policies: background jobs do not run here, so the
-- scheduler calls refresh_continuous_aggregate / compress_chunk / drop_chunks itself.

CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE warm_meta (
    mode text PRIMARY KEY CHECK (mode IN ('postgres', 'timescale'))
);
INSERT INTO warm_meta (mode) VALUES ('timescale');

CREATE TABLE events (
    stream_id   integer          NOT NULL,
    key_id      bigint           NOT NULL,
    ts          timestamptz      NOT NULL,
    value       double precision NOT NULL,
    id          text
);
DO $$ BEGIN
    PERFORM create_hypertable('events', by_range('ts', INTERVAL '1 day'), create_default_indexes => false);
END $$;
CREATE INDEX events_stream_ts ON events (stream_id, ts);

ALTER TABLE events SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'stream_id',
    timescaledb.compress_orderby = 'ts, key_id'
);

CREATE MATERIALIZED VIEW rollup_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = true, timescaledb.create_group_indexes = false) AS
SELECT stream_id, key_id, time_bucket(INTERVAL '1 minute', ts) AS bucket,
       count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max
FROM events
GROUP BY stream_id, key_id, time_bucket(INTERVAL '1 minute', ts)
WITH NO DATA;

CREATE MATERIALIZED VIEW rollup_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = true, timescaledb.create_group_indexes = false) AS
SELECT stream_id, key_id, time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       sum(count)::bigint AS count, sum(sum) AS sum, min(min) AS min, max(max) AS max
FROM rollup_1m
GROUP BY stream_id, key_id, time_bucket(INTERVAL '1 hour', bucket)
WITH NO DATA;

CREATE MATERIALIZED VIEW rollup_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = true, timescaledb.create_group_indexes = false) AS
SELECT stream_id, key_id, time_bucket(INTERVAL '1 day', bucket) AS bucket,
       sum(count)::bigint AS count, sum(sum) AS sum, min(min) AS min, max(max) AS max
FROM rollup_1h
GROUP BY stream_id, key_id, time_bucket(INTERVAL '1 day', bucket)
WITH NO DATA;

CREATE INDEX rollup_1m_by_sum ON rollup_1m (stream_id, bucket, sum DESC, key_id);
CREATE INDEX rollup_1m_by_count ON rollup_1m (stream_id, bucket, count DESC, key_id);
CREATE INDEX rollup_1m_by_key ON rollup_1m (stream_id, key_id, bucket);
CREATE INDEX rollup_1h_by_sum ON rollup_1h (stream_id, bucket, sum DESC, key_id);
CREATE INDEX rollup_1h_by_count ON rollup_1h (stream_id, bucket, count DESC, key_id);
CREATE INDEX rollup_1h_by_key ON rollup_1h (stream_id, key_id, bucket);
CREATE INDEX rollup_1d_by_sum ON rollup_1d (stream_id, bucket, sum DESC, key_id);
CREATE INDEX rollup_1d_by_count ON rollup_1d (stream_id, bucket, count DESC, key_id);
CREATE INDEX rollup_1d_by_key ON rollup_1d (stream_id, key_id, bucket);
