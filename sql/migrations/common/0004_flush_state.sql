-- depends: 0003_key_dictionary
-- flush_checkpoint: the last event-log entry whose events are in warm, written in the same
-- transaction as the events (a crash between commit and XACK must not insert twice).
-- warm_dirty: minute buckets whose raw events changed since the last refresh, written in the
-- same transaction as the change; refresh recomputes exactly these and deletes the rows it read.

CREATE TABLE flush_checkpoint (
    log         text        PRIMARY KEY,
    entry_ms    bigint      NOT NULL,
    entry_seq   bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE warm_dirty (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id   integer     NOT NULL,
    bucket      timestamptz NOT NULL
);

CREATE INDEX warm_dirty_bucket ON warm_dirty (bucket);
