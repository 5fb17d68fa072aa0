-- depends: 0101_warm_timescale
-- The 1m rollup serves range edges and series, never a top-K head: it keeps only its key index
-- (each index costs every materialisation). Indexes of a continuous aggregate live on its
-- materialization hypertable, in TimescaleDB's internal schema.

DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT schemaname, indexname FROM pg_indexes
             WHERE indexname IN ('rollup_1m_by_sum', 'rollup_1m_by_count') LOOP
        EXECUTE format('DROP INDEX %I.%I', r.schemaname, r.indexname);
    END LOOP;
END $$;
