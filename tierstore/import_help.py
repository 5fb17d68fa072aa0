"""What `tierstore import --help` prints: formats, columns and the time rule (no heavy imports)."""

IMPORT_HELP = """\
Historical backfill: every file is read and validated first (all or nothing); a bad row stops the
import naming the file, the row (1-based, data rows), the column and the cause.

formats (by file name):
  .ndjson .jsonl .json   one JSON object a line
  .csv                   a header line, then rows
  .parquet               columns by name

columns:
  stream   required; [a-z0-9][a-z0-9_.-]{0,63}
  key      required; 1..256 UTF-8 bytes
  ts       required; see the time rule
  value    optional number, default 1.0; |value| <= 1e15
  id       optional idempotency id, 1..256 UTF-8 bytes (an id repeated in the files is kept once,
           its first row; an event whose id its stream already stores on the same UTC day
           is skipped; the newest events, ingested, are refused by id within dedup_window)
  tenant   optional; default --tenant, else "default"

time rule (the same in every format):
  epoch milliseconds (an integer)            always accepted
  RFC 3339 with a zone: 2025-02-01T10:00:00Z, 2025-02-01 10:00:00+02:00
                                             always accepted
  no zone: 2025-02-01T10:00:00, a Parquet timestamp without a time zone
                                             only with --assume-utc (read as UTC)
  date only: 2025-02-01, a Parquet date      midnight; only with --assume-utc (UTC)
  without --assume-utc a time without a zone is refused:
    "no time zone: add Z or an offset, or pass --assume-utc"
  a time more than clock_skew (5 min) in the future is refused, as the ingest API refuses it

where events go: on a fresh instance (before export_cold first runs) by the tier ages: older than
cold_age to the archive (S3), older than warm_age to cold (Parquet), up to the hot boundary to warm,
newer through the ingest path; the catalog boundaries move once, when the import commits.
Otherwise by the current boundaries: cold days are rewritten whole with the imported events added
(an event whose id the day holds is skipped) and warm days take them by COPY (the same rule); events older than the
archive boundary are merged the same way into their archived days and packs (rewritten at new object
keys, swapped in when the import commits, the replaced objects deleted after it; refused with
cold_engine trino). Rerunning an import of the same
files writes nothing twice; after a crash or a failure, a rerun of the same files finishes it (into
an instance that already holds data, each cold day is replaced atomically on its own, so the days
placed before a failure are answered meanwhile). `--history` is accepted and changes
nothing: every import is a history import.
"""
