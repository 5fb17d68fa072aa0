-- depends: 0051_legal_holds_retention_audit
-- Compliance reports (scheduler/reports.py, router/reports.py): one row per requested report.
-- The file lives under $TIERSTORE_HOME/reports/<id>.<format>; `manifest` lists every source
-- read ({tier, source, rows, sha256}); `catalog_version` is the snapshot the report was cut by.

CREATE TABLE reports (
    id              text        PRIMARY KEY,
    tenant          text        NOT NULL,
    stream          text        NOT NULL,
    from_ms         bigint      NOT NULL,
    to_ms           bigint      NOT NULL CHECK (to_ms > from_ms),
    kind            text        NOT NULL CHECK (kind IN ('totals', 'events')),
    format          text        NOT NULL CHECK (format IN ('csv', 'parquet', 'json')),
    status          text        NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done', 'failed')),
    progress        real        NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
    rows            bigint,
    sha256          text,
    bytes           bigint,
    path            text,
    manifest        jsonb       NOT NULL DEFAULT '[]'::jsonb,
    catalog_version bigint,
    error           text,
    requested       timestamptz NOT NULL DEFAULT now(),
    started         timestamptz,
    finished        timestamptz
);

CREATE INDEX reports_status ON reports (status, requested);
