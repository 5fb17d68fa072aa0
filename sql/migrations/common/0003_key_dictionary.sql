-- depends: 0002_job_runs
-- Keys are interned per stream to integer ids (DESIGN.md "Keys are interned"): rollups, sketches
-- and the top-K algorithms work on ids; strings appear only at the API edge.

CREATE TABLE streams (
    id      integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant  text    NOT NULL,
    stream  text    NOT NULL,
    UNIQUE (tenant, stream)
);

CREATE TABLE keys (
    id          bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id   integer NOT NULL REFERENCES streams (id),
    key         text    NOT NULL,
    UNIQUE (stream_id, key)
);
