"""`tierstore import FILE...`: historical backfill from NDJSON, CSV or Parquet files.

Formats, by file name: .ndjson / .jsonl / .json (one JSON object a line), .csv (a header line),
.parquet. Columns (header / field names):
  stream  required; [a-z0-9_.-], 1..64 characters
  key     required; 1..256 UTF-8 bytes
  ts      required; see the time rule below
  value   optional number, default 1.0; |value| <= 1e15
  id      optional idempotency id, 1..256 UTF-8 bytes
  tenant  optional, default the `--tenant` argument or "default"
Time rule (every format alike, tierstore.import_times): epoch milliseconds (integer) always;
RFC 3339 text with a zone (Z or +hh:mm) always; a date and time without a zone, or a date only
(midnight), only with --assume-utc (read as UTC), else refused: "no time zone: add Z or an
offset, or pass --assume-utc". Parquet timestamp columns with a zone always; without a zone, and
date columns, only with --assume-utc.
Every file is read and validated before anything is written (all or nothing: a bad row stops the
import naming the file, the row (1-based, data rows), the column and the cause). The rules are the
ingest API's (router.models: key and id 1..256 UTF-8 bytes without U+0000, |value| <= 1e15).

Where each event goes: tierstore.history_import (the bulk path). On a fresh instance (export_cold
never ran) each day goes to the tier that owns it by the tier ages (archive older than cold_age,
cold older than warm_age, warm up to the hot boundary), written in that tier's format, and the
catalog moves once, in the transaction that commits warm's rows and the archive's registry rows;
elsewhere the current boundaries place them (cold days merged: events whose non-null id the day
already holds are skipped, warm likewise per UTC day, tierstore.history_warm.unseen_in_warm; events older than b_archive merged likewise into their archived days,
rewritten at versioned object keys and swapped in the same transaction: tierstore.history_archive). Newer events than the hot boundary take the ingest path
(RedisHotTier.ingest: log, dedup, hot aggregates) in chunks, each recorded in the ledger once
ingested, those without an id given "import:<digest>:<row>" (`newer_events`): a rerun after a crash
there sends only the chunks not recorded, and the hot tier's dedup refuses the events of the
chunk in flight that were accepted (exact when the rerun comes within dedup_window). A ledger keyed by the files' digest makes a rerun
of a finished import write nothing (`already_imported`), and a rerun after a crash redo only what
was not committed. Without an archive tier (tests), events older than b_archive are refused
before anything is written, the message saying what to do. The ingest API keeps refusing
everything below the seal (422 range_sealed): history changes only through here.
"""
from __future__ import annotations

import json
import math
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rollups.errors import BadRequest, TierUnavailable
from rollups.timeutil import format_time, now_ms
from tiers.base import EVENT_SCHEMA
from tierstore.import_times import ts_column
from tierstore.import_validate import first_bad_row, row_problem

_CHUNK = 50_000


class ImportRefused(BadRequest):
    """A file that cannot be imported; nothing was written."""

    code = "import_refused"


def read_events(path: Path, assume_utc: bool = False) -> dict[str, pa.Table]:
    """The events of one file, validated, by tenant (EVENT_SCHEMA tables).

    Raises ImportRefused naming the file and the cause (a reader's error included)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            table = pq.read_table(path)
        elif suffix == ".csv":
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={"key": pa.string(), "id": pa.string(), "stream": pa.string(),
                              "tenant": pa.string(), "ts": pa.string()},
                strings_can_be_null=True))
        elif suffix in (".ndjson", ".jsonl", ".json"):
            table = _read_ndjson(path)
        else:
            raise ImportRefused(f"{path}: unknown format (use .ndjson, .jsonl, .csv or .parquet)")
    except (OSError, pa.ArrowException) as exc:
        raise ImportRefused(f"{path}: cannot read {suffix.lstrip('.') or 'the file'}: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    return _normalise(path, table, assume_utc)


def _read_ndjson(path: Path) -> pa.Table:
    rows = []
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(orjson.loads(line))  # refuses lone surrogates, as ingest does
                except orjson.JSONDecodeError as exc:
                    raise ImportRefused(f"{path}:{n}: not JSON ({exc})") from None
    cols = {c: [r.get(c) for r in rows] for c in ("tenant", "stream", "key", "ts", "value", "id")}
    ts = cols.pop("ts")
    table = pa.table({c: pa.array([None if v is None else str(v) for v in vals], pa.string())
                      for c, vals in cols.items() if c != "value"})
    table = table.append_column("ts", pa.array([_ts_obj(v) for v in ts], pa.string()))
    return table.append_column("value", pa.array([_num(v) for v in cols["value"]], pa.float64()))


def _ts_obj(v: Any) -> str | None:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return None if v is None else json.dumps(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _num(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    try:
        return float(v)
    except OverflowError:  # an integer beyond float64: refused as not finite
        return math.inf


def _normalise(path: Path, table: pa.Table, assume_utc: bool = False) -> dict[str, pa.Table]:
    names = set(table.column_names)
    for required in ("stream", "key", "ts"):
        if required not in names:
            raise ImportRefused(f"{path}: column {required!r} is missing")
    n = table.num_rows
    ts = ts_column(table["ts"], assume_utc, lambda row, cause: ImportRefused(f"{path}: row {row}: column ts: {cause}"))
    value = (pc.fill_null(_values(path, table["value"]), 1.0) if "value" in names
             else pa.array([1.0] * n, pa.float64()))
    ids = table["id"].cast(pa.string()) if "id" in names else pa.nulls(n, pa.string())
    tenants = table["tenant"].cast(pa.string()) if "tenant" in names else pa.nulls(n, pa.string())
    events = pa.table({"stream": table["stream"].cast(pa.string()), "key": table["key"].cast(pa.string()),
                       "ts": ts, "value": value, "id": ids}, schema=EVENT_SCHEMA)
    _validate(path, events)
    tenants = pc.fill_null(tenants, "default")
    return {t: events.filter(pc.equal(tenants, t)) for t in pc.unique(tenants).to_pylist()}


def _values(path: Path, col: pa.ChunkedArray) -> pa.ChunkedArray:
    """The value column as float64; ImportRefused naming the first row that is not a number."""
    try:
        return col.cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for i, v in enumerate(col.to_pylist()):
            try:
                float(v) if v is not None else None
            except (TypeError, ValueError):
                raise ImportRefused(f"{path}: row {i + 1}: column value: not a number: {str(v)[:40]!r}",
                                    [{"field": "value", "problem": "not a number", "row": i + 1}]) from None
        raise ImportRefused(f"{path}: column value: not numbers ({col.type})") from None


def first_occurrences(events: pa.Table) -> tuple[pa.Table, int]:
    """`events` without the rows whose (stream, non-null id) an earlier row of it holds (the
    ingest API never counts an id twice), and how many rows were dropped."""
    if events.num_rows == 0 or events["id"].null_count == events.num_rows:
        return events, 0
    idx = pa.array(range(events.num_rows), pa.int64())
    keyed = pa.table({"stream": events["stream"], "id": events["id"], "i": idx}).filter(pc.is_valid(events["id"]))
    first = keyed.group_by(["stream", "id"]).aggregate([("i", "min")])["i_min"]
    if len(first) == keyed.num_rows:
        return events, 0
    keep = pc.or_(pc.is_null(events["id"]), pc.is_in(idx, value_set=first))
    kept = events.filter(keep)
    return kept, events.num_rows - kept.num_rows


def _refuse_future(path: Path, events: pa.Table, now: int, skew: int) -> None:
    """ImportRefused (nothing written) for events more than `skew` ms after `now`, as the ingest API
    refuses them (ts_in_future)."""
    if events.num_rows == 0 or pc.max(events["ts"]).as_py() <= now + skew:
        return
    late = events.filter(pc.greater(events["ts"], now + skew))
    first = pc.min(late["ts"]).as_py()
    raise ImportRefused(f"{path}: {late.num_rows} event(s) more than {skew // 1000} s in the future (the first at "
                        f"{format_time(first)}); the ingest API refuses them too, and nothing was written",
                        [{"field": "ts", "problem": "in the future", "count": late.num_rows}])


def _validate(path: Path, events: pa.Table) -> None:
    i = first_bad_row(events)
    if i is not None:
        row = events.select(["stream", "key", "value", "id"]).slice(i, 1).to_pylist()[0]
        raise ImportRefused(f"{path}: row {i + 1}: {row_problem(row) or 'refused'}")


def run_import(settings, paths: Iterable[str | Path], progress: bool = True, *, tenant: str | None = None,
               resources: Mapping[str, Any] | None = None, assume_utc: bool = False) -> dict[str, Any]:
    """Import the files (see the module doc); returns counts per destination.

    resources: cold, warm, hot, catalog and redis by name (tierstore.wiring.Resources, or a mapping
    a test builds); default: opened from `settings` here and closed at the end.
    """
    files = [Path(p) for p in paths]
    by_tenant: dict[str, list[pa.Table]] = {}
    started = now_ms()
    for f in files:
        for t, events in read_events(f, assume_utc).items():
            _refuse_future(f, events, started, settings.clock_skew)
            by_tenant.setdefault(tenant or t, []).append(events)
    # one table per tenant over all files: one warm refresh and one rewrite per cold day, not one per file;
    # an id repeated in the files is kept once (its first row), as the ingest API would
    loaded, repeated = [], 0
    for t, parts in by_tenant.items():
        events, dropped = first_occurrences(pa.concat_tables(parts))
        loaded.append((t, events))
        repeated += dropped
    with ExitStack() as stack:
        if resources is None:
            from tierstore.wiring import open_resources

            resources = stack.enter_context(open_resources(settings))
        try:
            stats = _import_loaded(settings, files, loaded, progress, resources, tenant)
            if repeated and not stats.get("already_imported"):
                stats["duplicates"] = stats.get("duplicates", 0) + repeated
            return stats
        except TierUnavailable as exc:  # name the driver's cause, not only the tier
            cause = exc.__cause__
            if cause is None or exc.message != f"The {exc.tier} tier is unavailable.":
                raise
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            raise TierUnavailable(exc.tier, f"The {exc.tier} tier failed during the import: "
                                            f"{type(cause).__name__}: {first}") from cause


def _import_loaded(settings, files: list[Path], loaded: list[tuple[str, pa.Table]], progress: bool,
                   resources: Mapping[str, Any], tenant: str | None = None) -> dict[str, Any]:
    from tierstore import history_import as H

    warm, hot = resources["warm"], resources["hot"]
    digest = H.files_digest(files, tenant)
    stats: dict[str, Any] = {"files": len(files), "archive": 0, "cold": 0, "warm": 0, "ingested": 0,
                             "duplicates": 0}
    done = H.ledger_parts(warm.pool, digest)
    if "done" in done:  # these files were imported: nothing is written twice
        return {**stats, "already_imported": True}
    total = sum(e.num_rows for _, e in loaded)
    with H.job_locks(resources), _bar(progress, total) as advance:
        if "placed" in done:  # a rerun after a crash during the ingest of the newer events
            to_warm = done["placed"]["to_warm"]
            if resources.get("archive") is not None:  # archive objects the commit replaced, if not yet deleted
                from tierstore.history_archive import sweep
                stats["archive_swept"] = sweep(resources["archive"], warm.pool, digest, done)
        else:
            place = H.plan(settings, resources, now_ms())
            if resources.get("archive") is None:
                _refuse_archived(loaded, place.b_archive)  # before anything is written: all or nothing
            from tiers.archive_packs import PackRule
            stats.update(H.place_events(resources, place, loaded, digest, done, advance,
                                        pack=PackRule.from_settings(settings)))
            to_warm = place.to_warm
        stats["to_warm"] = to_warm
        size = min(_CHUNK, settings.max_batch_events)
        for t, events in loaded:
            new = newer_events(events, to_warm, digest)
            for off in range(0, new.num_rows, size):
                chunk = new.slice(off, size)
                part = f"hot/{t}/{to_warm}/{off}+{size}"
                if part not in done:  # a rerun skips the chunks ingested before the crash
                    res = hot.ingest(t, chunk, now_ms=now_ms())
                    stats["ingested"] += res.accepted
                    stats["duplicates"] += res.duplicates
                    with warm.pool.connection() as conn:
                        H.record(conn, digest, part, {"accepted": res.accepted})
                advance(chunk.num_rows)
        with warm.pool.connection() as conn:
            H.record(conn, digest, "done", stats)
    return stats


def newer_events(events: pa.Table, to_warm: int, digest: str) -> pa.Table:
    """The events at or after to_warm (epoch ms), for the ingest path; those without an id get
    "import:<digest>:<row>" (row: 0-based, in the tenant's events of every file in order), so
    the hot tier's dedup refuses them when a rerun after a crash sends them again (within
    dedup_window of the first send; chunks recorded in the ledger are not sent again at all)."""
    keep = pc.greater_equal(events["ts"], to_warm)
    new = events.filter(keep)
    missing = pc.is_null(new["id"])
    if not new.num_rows or not pc.any(missing).as_py():
        return new
    rows = pa.array(np.flatnonzero(np.asarray(keep.to_numpy(zero_copy_only=False), bool)))
    made = pc.binary_join_element_wise(f"import:{digest[:32]}", rows.cast(pa.string()), ":")
    return new.set_column(new.schema.get_field_index("id"), "id", pc.if_else(missing, made, new["id"]))


def _refuse_archived(loaded: list[tuple[str, pa.Table]], b_archive: int) -> None:
    """Refuse (ImportRefused, nothing written) events older than b_archive, saying what to do."""
    old = [(t, e.filter(pc.less(e["ts"], b_archive))) for t, e in loaded if e.num_rows]
    old = [(t, e) for t, e in old if e.num_rows]
    if not old:
        return
    n = sum(e.num_rows for _, e in old)
    first = min(pc.min(e["ts"]).as_py() for _, e in old)
    raise ImportRefused(
        f"{n} event(s) (the oldest at {format_time(first)}) are older than the archive boundary "
        f"{format_time(b_archive)}, and this instance has no archive tier configured (S3 settings) to merge "
        "them into; nothing was written. Configure the archive tier (the S3 endpoint and bucket) and run the "
        f"import again, or import only events at or after {format_time(b_archive)} (remove the older rows "
        "from the files); GET /v1/tiers shows the boundaries.",
        [{"field": "ts", "problem": f"before the archive boundary {format_time(b_archive)}", "count": n}])


class _bar:
    """A rich progress bar over events (or nothing); the context value is advance(n)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("import"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self._progress.start()
        task = self._progress.add_task("events", total=self.total)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._progress.stop()
