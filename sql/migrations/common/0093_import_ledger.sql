-- depends: 0085_approx_sketches_warm_only
-- tierstore import (tierstore/history_import.py): what an import of given files (their digest)
-- has done, so a rerun of the same files writes nothing twice. part: 'placed' (archive, cold and
-- warm written, committed with the catalog move), 'done' (the newer events ingested too), or
-- 'cold/<tenant>/<stream>/<day ms>' (an owned cold day merged and renamed into place).
CREATE TABLE IF NOT EXISTS import_ledger (
    digest      text        NOT NULL,
    part        text        NOT NULL,
    stats       jsonb,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (digest, part)
);
