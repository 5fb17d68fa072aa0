-- depends: 0096_archive_packs
-- Exact sums (issue 10 item 5): the aggregates that sum pairs hi + lo exactly in SQL, for the warm
-- tier's reads in either mode (tiers/warm_pairs.py; postgres mode keeps its sums as such pairs,
-- warm_postgres/0104_exact_sums.sql). OR REPLACE: a database migrated before this file has them from
-- an earlier version of the warm migrations 0104.

-- tierstore_pair_hi(st), tierstore_pair_lo(st) over states st = ARRAY[1, hi, 0, lo, 0, 0] (one a row):
-- hi and lo of the exact sum of the pairs (hi, lo). The state's layout is the regression
-- aggregates': the builtin C final functions float8_regr_avgx / avgy return hi / 1 and lo / 1
-- (exact). The two aggregates share one transition state per group (same SFUNC, same input), and
-- the transition is STRICT without INITCOND, so a group's first row becomes its state without a
-- call: one plpgsql TwoSum (~1 us) per further row, none for a group of one row. No row: NULL.
CREATE OR REPLACE FUNCTION tierstore_pair_acc(st float8[], x float8[]) RETURNS float8[]
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

CREATE OR REPLACE AGGREGATE tierstore_pair_hi(float8[]) (
    SFUNC = tierstore_pair_acc, STYPE = float8[], FINALFUNC = float8_regr_avgx,
    COMBINEFUNC = tierstore_pair_acc, PARALLEL = SAFE
);
CREATE OR REPLACE AGGREGATE tierstore_pair_lo(float8[]) (
    SFUNC = tierstore_pair_acc, STYPE = float8[], FINALFUNC = float8_regr_avgy,
    COMBINEFUNC = tierstore_pair_acc, PARALLEL = SAFE
);
