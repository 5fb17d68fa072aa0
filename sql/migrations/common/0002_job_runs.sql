-- depends: 0001_catalog
-- One row per job run (scheduler/runner.py). as_of is epoch milliseconds, like the catalog.

CREATE TABLE job_runs (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job         text        NOT NULL,
    status      text        NOT NULL DEFAULT 'queued'
                            CHECK (status IN ('queued', 'running', 'done', 'failed', 'skipped')),
    as_of       bigint      NOT NULL,
    requested   timestamptz NOT NULL DEFAULT now(),
    started     timestamptz,
    finished    timestamptz,
    progress    real        NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
    stats       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error       text
);

CREATE INDEX job_runs_job_id ON job_runs (job, id DESC);
