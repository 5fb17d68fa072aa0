-- depends: 0103_stream_totals
-- Exact sums (issue 10 item 5): every sum of the warm tier is a pair hi + lo (double-double, as
-- the hot tier's: rollups/pairsum.py), hi the float nearest the exact sum of the raw values and
-- lo what it could not hold. tiers/warm_pairs.py adds pairs with TwoSum in plain float8
-- expressions (never through numeric: float8::numeric rounds to 15 significant digits) and sums
-- many rows with tierstore_pair_hi / _lo (common/0097_pair_sum_aggregates.sql), except the rows a
-- plain sum adds exactly.

ALTER TABLE warm_delta ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE rollup_1m ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE rollup_1h ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE rollup_1d ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE total_1m ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE total_1h ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE total_1d ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;

-- Streams that ever received a value off the grid (tiers/warm_pairs.py: not a multiple of 2**-8
-- below 2**32 in magnitude), marked in the insert's transaction. Only their reads sum as pairs;
-- every sum of any other stream is exact as a plain float sum, so they read as before.
CREATE TABLE warm_offgrid_streams (
    stream_id   integer PRIMARY KEY
);
INSERT INTO warm_offgrid_streams (stream_id)
SELECT DISTINCT stream_id FROM events
WHERE NOT (abs(value) < 4294967296 AND value * 256 = round(value * 256));
