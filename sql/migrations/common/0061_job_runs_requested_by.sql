-- depends: 0002_job_runs
-- Who asked for each job run (scheduler/runner.py): "scheduler", "cli:<os user>", or the API's
-- principal ("api:<tenant>:<credential>", router.auth.Principal.name). Runs recorded before this
-- column existed say 'unknown'.

ALTER TABLE job_runs ADD COLUMN requested_by text NOT NULL DEFAULT 'unknown';
