-- depends: 0061_job_runs_requested_by
-- approx_sketches: serialized DataSketches frequent-items sketches of one whole bucket of one
-- tier (tiers/sketch_store.py), for the approximate top-K (mode=approx). `version` is a digest
-- of the tier's data version of the bucket when the sketch was built; a sketch whose version no
-- longer matches is rebuilt. `sketch` is NULL with `refused` set when the bucket cannot be
-- sketched (by=sum over negative sums).
CREATE TABLE approx_sketches (
    tenant      text        NOT NULL,
    stream      text        NOT NULL,
    tier        text        NOT NULL,
    granularity text        NOT NULL,
    bucket      bigint      NOT NULL,  -- bucket start, epoch ms
    rank_by     text        NOT NULL,  -- count | sum
    lg_k        smallint    NOT NULL,
    version     text        NOT NULL,
    sketch      bytea,
    refused     text,
    built_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, stream, tier, granularity, bucket, rank_by, lg_k)
);
