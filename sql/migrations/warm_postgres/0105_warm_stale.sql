-- depends: 0104_exact_sums
-- Rollup buckets of 1h and 1d that refresh left stale on purpose (issue 11, write path at scale):
-- a bucket ending after b_warm lies (partly) in the time the hot tier owns, so no query reads it
-- from warm yet; refresh folds changes there into rollup_1m only and records the bucket here.
-- Before b_warm passes a bucket's end, refresh (from expire_hot, with the new b_warm) recomputes
-- it from the level below and deletes its row; expire_hot checks none is left below its target.

CREATE TABLE warm_stale (
    grain       text        NOT NULL CHECK (grain IN ('1h', '1d')),
    stream_id   integer     NOT NULL,
    bucket      timestamptz NOT NULL,
    bucket_end  timestamptz NOT NULL,
    PRIMARY KEY (grain, stream_id, bucket)
);
CREATE INDEX warm_stale_by_end ON warm_stale (bucket_end);
