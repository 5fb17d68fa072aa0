-- depends: 0004_flush_state
-- Warm tier, postgres mode: raw events in native daily range partitions (created ahead by
-- tiers/warm.py) and rollup tables that the refresh job maintains incrementally from warm_dirty.

CREATE TABLE warm_meta (
    mode text PRIMARY KEY CHECK (mode IN ('postgres', 'timescale'))
);
INSERT INTO warm_meta (mode) VALUES ('postgres');

CREATE TABLE events (
    stream_id   integer          NOT NULL,
    key_id      bigint           NOT NULL,
    ts          timestamptz      NOT NULL,
    value       double precision NOT NULL,
    id          text
) PARTITION BY RANGE (ts);

CREATE INDEX events_stream_ts ON events (stream_id, ts);

CREATE TABLE rollup_1m (
    stream_id   integer          NOT NULL,
    key_id      bigint           NOT NULL,
    bucket      timestamptz      NOT NULL,
    count       bigint           NOT NULL,
    sum         double precision NOT NULL,
    min         double precision NOT NULL,
    max         double precision NOT NULL,
    PRIMARY KEY (stream_id, bucket, key_id)
);
CREATE INDEX rollup_1m_by_sum ON rollup_1m (stream_id, bucket, sum DESC, key_id);
CREATE INDEX rollup_1m_by_count ON rollup_1m (stream_id, bucket, count DESC, key_id);
CREATE INDEX rollup_1m_by_key ON rollup_1m (stream_id, key_id, bucket);

CREATE TABLE rollup_1h (LIKE rollup_1m INCLUDING ALL);
CREATE TABLE rollup_1d (LIKE rollup_1m INCLUDING ALL);
