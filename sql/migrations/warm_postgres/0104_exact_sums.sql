-- depends: 0103_stream_totals
-- Exact sums (issue 10 item 5): every sum of the warm tier is a pair hi + lo (double-double, as
-- the hot tier's: rollups/pairsum.py), hi the float nearest the exact sum of the raw values and
-- lo what it could not hold. tiers/warm_pairs.py adds pairs with TwoSum in plain float8
-- expressions (never through numeric: float8::numeric rounds to 15 significant digits) and sums
-- many rows with tierstore_pair_hi / _lo below, except the rows a plain sum adds exactly.

ALTER TABLE warm_delta ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE rollup_1m ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE rollup_1h ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE rollup_1d ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE total_1m ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE total_1h ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE total_1d ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;

-- tierstore_pair_hi(st), tierstore_pair_lo(st) over states st = ARRAY[1, hi, 0, lo, 0, 0] (one a row):
-- hi and lo of the exact sum of the pairs (hi, lo). The state's layout is the regression
-- aggregates': the builtin C final functions float8_regr_avgx / avgy return hi / 1 and lo / 1
-- (exact). The two aggregates share one transition state per group (same SFUNC, same input), and
-- the transition is STRICT without INITCOND, so a group's first row becomes its state without a
-- call: one plpgsql TwoSum (~1 us) per further row, none for a group of one row. No row: NULL.
CREATE FUNCTION tierstore_pair_acc(st float8[], x float8[]) RETURNS float8[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    a float8 := st[2];
    h float8 := x[2];
    s float8 := a + h;
    bb float8 := s - a;
    w float8 := (a - (s - bb)) + (h - bb) + (st[4] + x[4]);
    t float8 := s + w;
BEGIN
    bb := t - s;
    RETURN ARRAY[1, t, 0, (s - (t - bb)) + (w - bb), 0, 0];
END $$;

CREATE AGGREGATE tierstore_pair_hi(float8[]) (
    SFUNC = tierstore_pair_acc, STYPE = float8[], FINALFUNC = float8_regr_avgx,
    COMBINEFUNC = tierstore_pair_acc, PARALLEL = SAFE
);
CREATE AGGREGATE tierstore_pair_lo(float8[]) (
    SFUNC = tierstore_pair_acc, STYPE = float8[], FINALFUNC = float8_regr_avgy,
    COMBINEFUNC = tierstore_pair_acc, PARALLEL = SAFE
);

-- Streams that ever received a value off the grid (tiers/warm_pairs.py: not a multiple of 2**-8
-- below 2**32 in magnitude), marked in the insert's transaction. Only their reads sum as pairs;
-- every sum of any other stream is exact as a plain float sum, so they read as before.
CREATE TABLE warm_offgrid_streams (
    stream_id   integer PRIMARY KEY
);
INSERT INTO warm_offgrid_streams (stream_id)
SELECT DISTINCT stream_id FROM events
WHERE NOT (abs(value) < 4294967296 AND value * 256 = round(value * 256));
