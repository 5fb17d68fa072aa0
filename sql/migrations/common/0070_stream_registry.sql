-- depends: 0053_audit_log
-- The stream registry (tiers/stream_registry.py, router/streams.py): what a stream of a tenant is
-- and what its values mean. value_min/value_max narrow the values ingest accepts; retention_ms
-- overrides archive_retention for the stream (scheduler/retention.py); time_zone is the stream's
-- default IANA zone for local-day queries. A stream exists without a row here (data makes it exist);
-- the row only describes it. (The key dictionary's table `streams` is another thing: ids of names.)

CREATE TABLE stream_registry (
    tenant        text             NOT NULL,
    stream        text             NOT NULL,
    description   text             NOT NULL DEFAULT '',
    unit          text             NOT NULL DEFAULT '',
    value_min     double precision,
    value_max     double precision,
    retention     text,            -- as given ("400d", "7y"); retention_ms is what the job reads
    retention_ms  bigint           CHECK (retention_ms > 0),
    time_zone     text,
    created_at    timestamptz      NOT NULL DEFAULT now(),
    updated_at    timestamptz      NOT NULL DEFAULT now(),
    updated_by    text             NOT NULL DEFAULT 'unknown',
    PRIMARY KEY (tenant, stream),
    CHECK (value_min IS NULL OR value_max IS NULL OR value_min <= value_max)
);
