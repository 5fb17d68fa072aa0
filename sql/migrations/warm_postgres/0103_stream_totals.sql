-- depends: 0102_warm_delta
-- Stream-wide totals per bucket (all keys together): a series without a key reads one row per
-- bucket instead of one per key and bucket. refresh keeps them in step with the rollups.

CREATE TABLE total_1m (
    stream_id   integer          NOT NULL,
    bucket      timestamptz      NOT NULL,
    count       bigint           NOT NULL,
    sum         double precision NOT NULL,
    min         double precision NOT NULL,
    max         double precision NOT NULL,
    PRIMARY KEY (stream_id, bucket)
);
CREATE TABLE total_1h (LIKE total_1m INCLUDING ALL);
CREATE TABLE total_1d (LIKE total_1m INCLUDING ALL);

INSERT INTO total_1m SELECT stream_id, bucket, sum(count), sum(sum), min(min), max(max) FROM rollup_1m GROUP BY 1, 2;
INSERT INTO total_1h SELECT stream_id, bucket, sum(count), sum(sum), min(min), max(max) FROM rollup_1h GROUP BY 1, 2;
INSERT INTO total_1d SELECT stream_id, bucket, sum(count), sum(sum), min(min), max(max) FROM rollup_1d GROUP BY 1, 2;
