-- depends: 0003_key_dictionary
-- The archive tier's registry (tiers/archive.py): one row per partition copied to S3 — a day
-- (raw events + 1h/1d rollups and their value-sorted copies) or a week/month rollup period.
-- `manifest` is the partition's manifest as uploaded next to its objects: object keys, rows,
-- count/sum/min/max, size, SHA-256 and ETag of each. Readers list partitions here (never by
-- listing the bucket); a row is written in the same transaction that moves b_archive.
-- status: archived (readable) -> deleting (retention committed to delete it; unreadable) ->
-- deleted (objects gone; the row stays as the record).

CREATE TABLE archive_partitions (
    tenant        text        NOT NULL,
    stream        text        NOT NULL,
    period        text        NOT NULL CHECK (period IN ('day', 'week', 'month')),
    start_ms      bigint      NOT NULL,
    end_ms        bigint      NOT NULL CHECK (end_ms > start_ms),
    status        text        NOT NULL DEFAULT 'archived' CHECK (status IN ('archived', 'deleting', 'deleted')),
    raw_rows      bigint      NOT NULL DEFAULT 0,
    event_count   bigint      NOT NULL DEFAULT 0,
    value_sum     double precision NOT NULL DEFAULT 0,
    manifest_key  text        NOT NULL,
    manifest_sha256 text      NOT NULL,
    manifest      jsonb       NOT NULL,
    archived_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    PRIMARY KEY (tenant, stream, period, start_ms)
);

CREATE INDEX archive_partitions_status ON archive_partitions (status, period, end_ms);
