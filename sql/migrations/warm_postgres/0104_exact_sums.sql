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

-- tierstore_pair_hi(hi, lo), tierstore_pair_lo(hi, lo): the pair {hi, lo} of the exact sum of the pairs
-- (lo 0 for plain values). The state is {1, hi, 0, lo, 0, 0}, the layout of the regression
-- aggregates' state: the builtin C final functions float8_regr_avgx / avgy return hi / 1 and
-- lo / 1 (exact), and the two aggregates share one transition state per group (same SFUNC,
-- same inputs): one plpgsql TwoSum per row (~1 us), none per group.
CREATE FUNCTION tierstore_pair_acc(st float8[], h float8, l float8) RETURNS float8[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    a float8 := st[2];
    s float8 := a + h;
    bb float8 := s - a;
    w float8 := (a - (s - bb)) + (h - bb) + (st[4] + l);
    t float8 := s + w;
BEGIN
    bb := t - s;
    RETURN ARRAY[1, t, 0, (s - (t - bb)) + (w - bb), 0, 0];
END $$;

CREATE FUNCTION tierstore_pair_comb(x float8[], y float8[]) RETURNS float8[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$ BEGIN RETURN tierstore_pair_acc(x, y[2], y[4]); END $$;

CREATE AGGREGATE tierstore_pair_hi(float8, float8) (
    SFUNC = tierstore_pair_acc, STYPE = float8[], INITCOND = '{1,0,0,0,0,0}',
    FINALFUNC = float8_regr_avgx, COMBINEFUNC = tierstore_pair_comb, PARALLEL = SAFE
);
CREATE AGGREGATE tierstore_pair_lo(float8, float8) (
    SFUNC = tierstore_pair_acc, STYPE = float8[], INITCOND = '{1,0,0,0,0,0}',
    FINALFUNC = float8_regr_avgy, COMBINEFUNC = tierstore_pair_comb, PARALLEL = SAFE
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
