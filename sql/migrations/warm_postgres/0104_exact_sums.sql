-- depends: 0103_stream_totals
-- Exact sums (issue 10 item 5): every sum of the warm tier is a pair hi + lo (double-double, as
-- the hot tier's: rollups/pairsum.py), hi the float nearest the exact sum of the raw values and
-- lo what it could not hold. tiers/warm_pairs.py adds pairs with TwoSum in plain float8
-- expressions (never through numeric: float8::numeric rounds to 15 significant digits) and sums
-- many rows with tierstore_pair_sum below, except the rows a plain sum adds exactly.

ALTER TABLE warm_delta ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE rollup_1m ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE rollup_1h ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE rollup_1d ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE total_1m ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE total_1h ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;
ALTER TABLE total_1d ADD COLUMN sum_lo double precision NOT NULL DEFAULT 0;

-- state {hi, lo} plus the pair (h, l): TwoSum of the his, the los and its error added, renormalised
CREATE FUNCTION tierstore_pair_acc(st float8[], h float8, l float8) RETURNS float8[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    a float8 := st[1];
    s float8 := a + h;
    bb float8 := s - a;
    w float8 := (a - (s - bb)) + (h - bb) + (st[2] + l);
    t float8 := s + w;
BEGIN
    bb := t - s;
    RETURN ARRAY[t, (s - (t - bb)) + (w - bb)];
END $$;

CREATE FUNCTION tierstore_pair_comb(x float8[], y float8[]) RETURNS float8[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT tierstore_pair_acc(x, y[1], y[2]) $$;

-- tierstore_pair_sum(hi, lo): {hi, lo} of the exact sum of the pairs (lo 0 for plain values)
CREATE AGGREGATE tierstore_pair_sum(float8, float8) (
    SFUNC = tierstore_pair_acc, STYPE = float8[], INITCOND = '{0,0}',
    COMBINEFUNC = tierstore_pair_comb, PARALLEL = SAFE
);
