-- The catalog of tier ownership: one row, boundaries as epoch milliseconds (tiers/catalog.py).
-- PgCatalog.initialise() inserts the row on first start; every move appends to catalog_history.

CREATE TABLE catalog (
    id          smallint    PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    b_archive   bigint      NOT NULL,
    b_cold      bigint      NOT NULL,
    b_warm      bigint      NOT NULL,
    version     bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (b_archive <= b_cold AND b_cold <= b_warm),
    CHECK (b_archive % 60000 = 0 AND b_cold % 60000 = 0 AND b_warm % 60000 = 0)
);

-- Which boundaries held when: a source trims what it handed over only once no query can still
-- hold a snapshot that routes there (the grace period is measured on changed_at).
CREATE TABLE catalog_history (
    version     bigint      PRIMARY KEY,
    b_archive   bigint      NOT NULL,
    b_cold      bigint      NOT NULL,
    b_warm      bigint      NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
