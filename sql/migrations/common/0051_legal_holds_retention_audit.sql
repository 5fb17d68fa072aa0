-- depends: 0050_archive_partitions
-- Legal holds (tierstore/holds.py, `tierstore hold add|remove|list`): while a hold is active
-- (released_at IS NULL), retention deletes no archive partition of its tenant (and stream, when
-- set) that overlaps [from_ms, to_ms). Released holds stay as the record.
-- retention_audit: every decision of the retention job about a partition past its retention —
-- deleted, or kept (and why), or what a dry run would have done.

CREATE TABLE legal_holds (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant        text        NOT NULL,
    stream        text,
    from_ms       bigint      NOT NULL,
    to_ms         bigint      NOT NULL CHECK (to_ms > from_ms),
    reason        text        NOT NULL,
    created_by    text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    released_at   timestamptz,
    released_by   text
);

CREATE INDEX legal_holds_active ON legal_holds (tenant, stream) WHERE released_at IS NULL;

CREATE TABLE retention_audit (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    run_id        bigint,
    as_of         bigint      NOT NULL,
    dry_run       boolean     NOT NULL,
    action        text        NOT NULL CHECK (action IN ('delete', 'would_delete', 'kept_hold', 'kept_no_rollups',
                                                         'rebuilt_period', 'would_rebuild_period')),
    tenant        text        NOT NULL,
    stream        text        NOT NULL,
    period        text        NOT NULL,
    start_ms      bigint      NOT NULL,
    end_ms        bigint      NOT NULL,
    cutoff_ms     bigint      NOT NULL,
    raw_rows      bigint      NOT NULL DEFAULT 0,
    event_count   bigint      NOT NULL DEFAULT 0,
    value_sum     double precision NOT NULL DEFAULT 0,
    objects       jsonb       NOT NULL DEFAULT '[]'::jsonb,
    hold_ids      bigint[]    NOT NULL DEFAULT '{}',
    reason        text        NOT NULL DEFAULT ''
);

CREATE INDEX retention_audit_partition ON retention_audit (tenant, stream, start_ms);
