-- depends: 0103_stream_totals
-- Exact sums (issue 10 item 5): the pair aggregate of warm_postgres/0104_exact_sums.sql. The
-- continuous aggregates keep one float per sum (no sum_lo column): timescale mode's sums are not
-- yet exact pairs (tiers/warm_pairs.py; its statements read sum_lo in postgres mode only).

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
