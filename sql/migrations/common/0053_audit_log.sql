-- depends: 0052_reports
-- audit_log: every operator action that changes or discards data outside the jobs (first: replaying
-- and deleting dead letters, router/deadletters.py), with who asked, from where, and when. Written in
-- the same transaction as the check that allowed the action, so an action is never left unrecorded.
-- `details` holds ids and counts only (never event data: jsonb cannot hold every string an event may).

CREATE TABLE audit_log (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    principal    text        NOT NULL,
    tenant       text        NOT NULL,
    remote_addr  text,
    action       text        NOT NULL,
    target       text        NOT NULL,
    details      jsonb       NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX audit_log_tenant_at ON audit_log (tenant, at);
