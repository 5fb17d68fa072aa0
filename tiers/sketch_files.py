"""Sketch files: the mode=approx frequent-items sketches of cold and archive partitions.

Every partition of the Parquet layout (tiers/parquet_layout.py) carries one more file beside its
raw events and rollups, written in the same atomic publish and listed by `period_files`, so the
archive job uploads it with the partition (and lists it in the manifest), and cold purge, archive
retention and stream deletes remove it with the partition:

    sketch_1d/tenant=T/stream=S/day=YYYY-MM-DD/part-0.parquet
    sketch_1w/tenant=T/stream=S/week=YYYY-MM-DD/part-0.parquet
    sketch_1mo/tenant=T/stream=S/month=YYYY-MM/part-0.parquet

Columns (SKETCH_SCHEMA), one row per rank measure (count, sum):
    rank_by string, lg_k int16, parts int32, sketch binary (DataSketches frequent_strings_sketch
    serialization; null when refused), refused string (why not: by=sum over a negative sum).

A day's sketch is built from the exact per-key partials of the day's raw events (one update per
key: the error bound is that sketch's own, 0 while the day holds fewer keys than the map's
capacity). A week's or month's sketch is the DataSketches merge of its days' sketches (the bounds
stay guaranteed; the error bound is at most the sum of the days'), written only when every day
of the period that has a rollup has a sketch.

Readers: tiers/sketch_buckets.py for the router (router/approx.py). The files carry no data
version of their own: the partition's (tiers/sketch_versions.py: the cold rollup file's identity,
the archive registry row) is theirs, since they are replaced with it. A sketch file is renamed
into place before the partition's rollups, so a reader that sees the new version also sees the
new sketch (and never memoises an old sketch under a new version).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rollups import sketches
from rollups.exactsum import sums_by
from rollups.timeutil import DAY_MS, G1D, G1MO, G1W, Granularity

#: lg_k of the sketches in files (the setting approx_sketch_lg_k's default; a query with another
#: lg_k merges them all the same: frequent-items sketches of different sizes merge)
FILE_LG_K = 12
SKETCH_SCHEMA = pa.schema([("rank_by", pa.string()), ("lg_k", pa.int16()), ("parts", pa.int32()),
                           ("sketch", pa.binary()), ("refused", pa.string())])
#: granularities that have sketch files (their partitions)
FILE_GRANULARITIES = (G1D, G1W, G1MO)
#: partition kind -> the granularity name in its sketch table's name (sketch_<name>)
PERIOD_TABLE = {"day": "1d", "week": "1w", "month": "1mo"}


def key_partials(raw: pa.Table) -> pa.Table:
    """Exact per-key (key, count, sum) of raw events (RAW_SCHEMA); compensated sums."""
    if raw.num_rows == 0:
        return pa.table({"key": pa.array([], pa.string()), "count": pa.array([], pa.int64()),
                         "sum": pa.array([], pa.float64())})
    keys = raw["key"].combine_chunks()
    enc = keys.dictionary_encode()
    idx = np.asarray(enc.indices.to_numpy(zero_copy_only=False), np.int64)
    counts = np.bincount(idx, minlength=len(enc.dictionary))
    order = np.unique(idx)
    sums = sums_by([idx], np.asarray(raw["value"].to_numpy(), np.float64))
    return pa.table({"key": enc.dictionary.take(pa.array(order)), "count": pa.array(counts[order], pa.int64()),
                     "sum": pa.array(sums, pa.float64())})


def _row(by: str, ks: sketches.KeySketch | None, refused: str | None, lg_k: int) -> dict[str, Any]:
    return {"rank_by": by, "lg_k": lg_k, "parts": 1, "sketch": None if ks is None else sketches.serialize(ks),
            "refused": refused}


def day_table(raw: pa.Table, lg_k: int = FILE_LG_K) -> pa.Table:
    """The sketch file of one day: its exact per-key partials sketched by count and by sum."""
    return partials_table(key_partials(raw), lg_k)


def partials_table(partials: pa.Table, lg_k: int = FILE_LG_K) -> pa.Table:
    """A sketch file's table from per-key partials (key, count, sum), sketched in row order."""
    rows = []
    for by in ("count", "sum"):
        try:
            rows.append(_row(by, sketches.build(partials, by, lg_k), None, lg_k))
        except sketches.NotSketchable as exc:
            rows.append(_row(by, None, str(exc), lg_k))
    return pa.Table.from_pylist(rows, schema=SKETCH_SCHEMA)


def decode(table: pa.Table) -> dict[str, sketches.KeySketch | str]:
    """{rank_by: KeySketch, or the reason it was refused} of a sketch file's table."""
    out: dict[str, sketches.KeySketch | str] = {}
    for r in table.to_pylist():
        out[r["rank_by"]] = (r["refused"] or "not sketchable") if r["sketch"] is None else \
            sketches.deserialize(r["sketch"])
    return out


def period_table(days: Iterable[pa.Table], lg_k: int = FILE_LG_K) -> pa.Table | None:
    """A week's or month's sketch file: the merge of its days' (None when no day is given)."""
    merged: dict[str, sketches.KeySketch] = {}
    refused: dict[str, str] = {}
    seen = False
    for t in days:
        seen = True
        for by, s in decode(t).items():
            if isinstance(s, str):
                refused.setdefault(by, s)
            else:
                merged.setdefault(by, sketches.KeySketch.empty(lg_k)).merge(s)
    if not seen:
        return None
    rows = [_row(by, None if by in refused else merged.get(by, sketches.KeySketch.empty(lg_k)),
                 refused.get(by), lg_k) for by in ("count", "sum")]
    return pa.Table.from_pylist(rows, schema=SKETCH_SCHEMA)


def staged_period(layout, tenant: str, stream: str, gran: Granularity, start: int,
                  day_starts: Iterable[int]) -> tuple[Path, pa.Table | None]:
    """(path, table) of a period's sketch file from the day sketch files in `layout`; table None
    when a day of `day_starts` (the days holding a daily rollup) has no sketch file (an old
    partition): the caller removes the period's sketch instead of writing a partial one."""
    path = layout.sketch_file(tenant, stream, gran, start)
    tables = []
    for d in day_starts:
        f = layout.sketch_file(tenant, stream, G1D, d)
        if not f.exists():
            return path, None
        tables.append(pq.ParquetFile(f).read())
    return path, period_table(tables)


def stage_day_sketch(layout, tenant: str, stream: str, day: int, src: Path | bytes | None, archived=None) -> None:
    """Copy a day's sketch file into a staging layout beside its rollup (archive week/month
    rebuilds: tiers/archive_partitions.py build_period). `src` is what the caller copied as the
    day's rollup_1d: a local cold path (its sibling sketch file is copied) or archived bytes (the
    day's archived sketch object is fetched through `archived`, an ArchivePartitions)."""
    dst = Path(layout.sketch_file(tenant, stream, G1D, day))
    data: bytes | None = None
    if isinstance(src, Path):
        root = src.parents[4]  # <root>/rollup_1d/tenant=/stream=/day=/part-0.parquet
        f = root / dst.relative_to(layout.root)
        data = f.read_bytes() if f.exists() else None
    elif src is not None and archived is not None:
        m = archived.registry.manifest(tenant, stream, "day", day)
        obj = m.object(sketch_table_name(G1D)) if m else None
        data = archived.store.get_bytes(obj["key"], obj["sha256"]) if obj else None
    if data is not None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)


def sketch_table_name(gran: Granularity) -> str:
    return "sketch_" + gran.name


def partition_of(gran: Granularity, start: int) -> tuple[str, int]:
    """(period, start) of the partition whose sketch file summarises a whole bucket of `gran`."""
    period = {"1d": "day", "1w": "week", "1mo": "month"}[gran.name]
    return period, start - start % DAY_MS if period == "day" else start


def read_cold(cold, tenant: str, stream: str, gran: Granularity, start: int) -> pa.Table | None:
    """The cold tier's sketch file of a whole bucket (None: the partition has none)."""
    path = cold.layout.sketch_file(tenant, stream, gran, start)
    try:
        return pq.read_table(path)
    except FileNotFoundError:
        return None


def read_archive(archive, tenant: str, stream: str, gran: Granularity, start: int) -> pa.Table | None:
    """The archived sketch object of a whole bucket's partition, checked against its manifest
    (None: the partition or its sketch is absent). Raises TierUnavailable("archive") when S3 or
    the registry is down."""
    from tiers.errors import translate

    period, pstart = partition_of(gran, start)
    with translate("archive"):
        m = archive.registry.manifest(tenant, stream, period, pstart)
        obj = m.object(sketch_table_name(gran)) if m else None
        if obj is None:
            return None
        return pq.read_table(pa.BufferReader(archive.store.get_bytes(obj["key"], obj["sha256"])))


__all__ = ["SKETCH_SCHEMA", "FILE_LG_K", "FILE_GRANULARITIES", "day_table", "period_table", "decode",
           "staged_period", "stage_day_sketch", "read_cold", "read_archive", "key_partials", "sketch_table_name"]
