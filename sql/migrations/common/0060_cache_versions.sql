-- depends: 0004_flush_state
-- cache_versions: the data versions of warm's pieces for the router's results cache
-- (tiers/versions.py). Every change to warm's raw events (kind 0) or rollups (kind 1) of a
-- stream and day gives its row a new random version in the same transaction as the change.
-- Rows are never deleted: a day that lost its row would read as "never changed" again. The row
-- (stream 0, day -1) changes with every delete and is part of every version.

CREATE TABLE cache_versions (
    stream_id   integer     NOT NULL,
    day         bigint      NOT NULL,  -- day start, epoch ms
    kind        smallint    NOT NULL,
    version     uuid        NOT NULL,
    PRIMARY KEY (stream_id, day, kind)
);
