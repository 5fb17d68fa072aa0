-- depends: 0103_stream_totals
-- Exact sums (issue 10 item 5): the pair aggregate of warm_postgres/0104_exact_sums.sql. The
-- continuous aggregates keep one float per sum (no sum_lo column): timescale mode's sums are not
-- yet exact pairs (tiers/warm_pairs.py; its statements read sum_lo in postgres mode only).

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

CREATE AGGREGATE tierstore_pair_sum(float8, float8) (
    SFUNC = tierstore_pair_acc, STYPE = float8[], INITCOND = '{0,0}',
    COMBINEFUNC = tierstore_pair_comb, PARALLEL = SAFE
);
