-- depends: 0101_warm_postgres
-- postgres mode: inserts pre-aggregated per (stream, key, minute) land in warm_delta in the same
-- transaction as the raw rows; refresh folds them into rollup_1m/1h/1d (count and sum add, min and
-- max combine), so its cost follows what was inserted, not the size of the buckets it touched.
-- Deletes still mark warm_dirty buckets, which refresh recomputes from raw.
-- The 1m rollup serves range edges and series, never a top-K head: it keeps only its key index.

CREATE TABLE warm_delta (
    stream_id   integer          NOT NULL,
    key_id      bigint           NOT NULL,
    bucket      timestamptz      NOT NULL,
    count       bigint           NOT NULL,
    sum         double precision NOT NULL,
    min         double precision NOT NULL,
    max         double precision NOT NULL
);

DROP INDEX rollup_1m_by_sum;
DROP INDEX rollup_1m_by_count;
