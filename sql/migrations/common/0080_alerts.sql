-- depends: 0061_job_runs_requested_by
-- Alerts (issue 14; tiers/alerts.py, scheduler/alerts.py, router/alerts.py): rules, the
-- notifications of their transitions (one per transition: UNIQUE (rule_id, transition)) and every
-- delivery attempt of each. A deleted rule keeps its row (deleted set) so its notifications stay.

CREATE TABLE alert_rules (
    id              bigserial        PRIMARY KEY,
    tenant          text             NOT NULL,
    name            text             NOT NULL DEFAULT '',
    stream          text             NOT NULL,
    key             text,
    kind            text             NOT NULL CHECK (kind IN ('threshold', 'rank')),
    aggregate       text             NOT NULL CHECK (aggregate IN ('count', 'sum', 'avg', 'min', 'max')),
    window_ms       bigint           NOT NULL CHECK (window_ms > 0),
    comparison      text             CHECK (comparison IN ('>', '>=', '<', '<=')),
    threshold       double precision,
    top_n           integer          CHECK (top_n > 0),
    webhook_url     text             NOT NULL,
    enabled         boolean          NOT NULL DEFAULT true,
    state           text             NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'firing', 'resolved')),
    state_since     timestamptz      NOT NULL DEFAULT now(),
    transitions     bigint           NOT NULL DEFAULT 0,
    last_value      double precision,
    last_rank       integer,
    last_evaluated  timestamptz,
    last_as_of      bigint,          -- epoch ms the last evaluation scored at
    created         timestamptz      NOT NULL DEFAULT now(),
    updated         timestamptz      NOT NULL DEFAULT now(),
    deleted         timestamptz
);
CREATE INDEX alert_rules_live ON alert_rules (id) WHERE deleted IS NULL;

CREATE TABLE alert_notifications (
    id              bigserial        PRIMARY KEY,
    rule_id         bigint           NOT NULL REFERENCES alert_rules (id),
    transition      bigint           NOT NULL,
    event           text             NOT NULL CHECK (event IN ('firing', 'resolved')),
    payload         jsonb            NOT NULL,
    status          text             NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        integer          NOT NULL DEFAULT 0,
    created         timestamptz      NOT NULL DEFAULT now(),
    finished        timestamptz,
    UNIQUE (rule_id, transition)
);
CREATE INDEX alert_notifications_pending ON alert_notifications (rule_id) WHERE status = 'pending';

CREATE TABLE alert_attempts (
    id              bigserial        PRIMARY KEY,
    notification_id bigint           NOT NULL REFERENCES alert_notifications (id),
    attempt         integer          NOT NULL,
    at              timestamptz      NOT NULL DEFAULT now(),
    ok              boolean          NOT NULL,
    status_code     integer,
    error           text,
    UNIQUE (notification_id, attempt)
);
