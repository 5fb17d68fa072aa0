"""The key column and one value column of the Parquet tiers (cold, archive): Tier.key_values and
Tier.distinct_keys over tiers.parquet_core.ParquetCore.

The same scans as ParquetCore.aggregate, projected to key_id and the one value (count or sum, with
the rollups' sum_lo; the engine reads only those columns of the files, dictionary-encoded key
ids), grouped by key_id in the engine (sums exact: parquet_core.exact_sums_sql) — or DISTINCT
key_id for the keys alone. With the DuckDB engines the files are read by Arrow instead (local
files, or the archive's objects through pyarrow's own S3 client rather than DuckDB's Python file
system wrapper): only the columns needed, rows filtered to each piece's range, grouped by key id
in numpy (bincount when exact; else pair sums, rollups.pairsum). Sums come back as exact pairs
(`value` and, when any is not 0, `value_lo`: Tier.key_values). Ids become strings through the
tier's key dictionary, vectorised.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from rollups.cover import Piece
from tiers import parquet_layout as PL
from tiers.base import KEY_VALUES_SCHEMA
from tiers.cold_topk import group_pairs, with_lows
from tiers.ranked_access import check_by


def _union(core, tenant: str, stream: str, pieces: Sequence[Piece], by: str | None) -> tuple[str, list] | None:
    """UNION ALL over the pieces of (g key_id[, x count or sum]) and its parameters; None: no file."""
    from tiers.parquet_core import _Listed

    subs, params = [], []
    listed = _Listed(core.partitions)
    for piece in pieces:
        scan = core._scan(tenant, stream, piece.granularity, piece.range, listed)
        if scan is None:
            continue
        src, src_params = core.engine.source(scan, tenant, stream)
        raw = piece.granularity.is_raw
        col = "ts" if raw else "bucket"
        if by is None:
            x = ""
        elif by == "count":
            x = ", count(*) AS x" if raw else ', "count" AS x'
        else:  # sums: every event / row a term (exact_sums_sql)
            x = (', 1 AS "count", value AS "sum", value AS "min", value AS "max", 0.0E0 AS sum_lo' if raw else
                 ', "count", "sum", "min", "max", coalesce(sum_lo, 0.0E0) AS sum_lo')
        group = " GROUP BY 1" if raw and by == "count" else ""
        subs.append(f"SELECT key_id AS g{x} FROM {src}{col} >= ? AND {col} < ?{group}")
        params.extend([*src_params, piece.range.start, piece.range.end])
    if not subs:
        return None
    return " UNION ALL ".join(subs), params


def _ids(t: pa.Table, name: str) -> pa.Array:
    col = t[name]
    return pa.array(col if isinstance(col, list) else col.to_numpy(), pa.int64()) if len(col) else pa.array([], pa.int64())


def _arrow_fs(core):
    """(True, file system or None for local paths) when the engine is DuckDB (its files can be
    read by Arrow), else (False, None)."""
    if core.engine.name != "duckdb":
        return False, None
    return True, getattr(core.engine, "pa_fs", None)


def _arrow_rows(core, fs, tenant: str, stream: str, pieces: Sequence[Piece],
                by: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(key ids, values or None) of every row of the pieces, read by Arrow: a raw piece's events
    (value 1 for count), a rollup piece's rows (its count or sum)."""
    from tiers.parquet_core import _Listed

    listed = _Listed(core.partitions)
    ids, xs = [], []
    for piece in pieces:
        scan = core._scan(tenant, stream, piece.granularity, piece.range, listed)
        if scan is None:
            continue
        raw = piece.granularity.is_raw
        col = "ts" if raw else "bucket"
        value = None if by is None else ("value" if raw else by)
        if raw and by == "count":
            value = None
        low = not raw and by == "sum"  # rollups: sum_lo too, null in files written before it existed
        columns = ["key_id"] + ([value] if value else []) + (["sum_lo"] if low else [])
        t = _read_rows(core, scan.files, fs, columns, col, piece.range, PL.ROLLUP_SCHEMA if low else None)
        kid = t["key_id"].to_numpy()
        if by is None:
            ids.append(kid)
        elif low:
            lows = np.asarray(t["sum_lo"].fill_null(0.0).to_numpy(), np.float64)
            i, x = with_lows(kid, t[value].to_numpy().astype(np.float64), lows)
            ids.append(i)
            xs.append(x)
        else:
            ids.append(kid)
            xs.append(t[value].to_numpy().astype(np.float64) if value else np.ones(t.num_rows))
    if not ids:
        return np.zeros(0, np.int64), (None if by is None else np.zeros(0))
    return np.concatenate(ids).astype(np.int64), (None if by is None else np.concatenate(xs))


def _read_rows(core, files: Sequence[str], fs, columns: list[str], col: str, rng,
               schema: pa.Schema | None) -> pa.Table:
    """`columns` of the files' rows with rng.start <= col < rng.end. The archive's copies in its disk
    cache (immutable: named by SHA-256) are read through its row-group LRU (`core.row_groups`,
    tiers.archive_ranked.S3Footers): a year's pack holds every day's raw and hourly edges, and each
    new range's edge decoded its row group again (25-80 ms an edge); the rest through a dataset."""
    groups = getattr(core, "row_groups", None)
    cached = [f for f in files if groups is not None and groups.cached_path(f)]
    rest = [f for f in files if f not in cached]
    parts = []
    for f in cached:
        try:
            parts.append(groups.read_local_range(f, columns, col, rng.start, rng.end, schema))
        except FileNotFoundError:  # evicted by another process since: the dataset path reads S3
            return _dataset(files, fs, schema).to_table(columns=columns, filter=(ds.field(col) >= rng.start)
                                                        & (ds.field(col) < rng.end))
    if rest:
        parts.append(_dataset(rest, fs, schema).to_table(
            columns=columns, filter=(ds.field(col) >= rng.start) & (ds.field(col) < rng.end)))
    if len(parts) == 1:
        return parts[0]
    return pa.concat_tables([p.cast(parts[0].schema) for p in parts])


def _dataset(files: Sequence[str], fs, schema: pa.Schema | None) -> ds.Dataset:
    """A dataset of a scan's files: s3:// ones through `fs` (the archive's S3 file system), the
    others (the cold tier's, or archived objects the disk cache holds: tiers/archive_cache.py)
    from local disk; one schema for both (the first file's when `schema` is None)."""
    remote = [str(f)[len("s3://"):] for f in files if fs is not None and str(f).startswith("s3://")]
    local = [str(f) for f in files if not (fs is not None and str(f).startswith("s3://"))]
    if not remote or not local:
        return ds.dataset(remote or local, format="parquet", filesystem=fs if remote else None, schema=schema)
    parts = [ds.dataset(remote, format="parquet", filesystem=fs, schema=schema)]
    parts.append(ds.dataset(local, format="parquet", schema=schema or parts[0].schema))
    return ds.dataset(parts)


def _arrow_key_values(core, fs, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> pa.Table:
    ids, xs = _arrow_rows(core, fs, tenant, stream, pieces, by)
    if len(ids) == 0:
        return KEY_VALUES_SCHEMA.empty_table()
    uniq, hi, lo = group_pairs(ids, xs)
    out = pa.Table.from_arrays([core.keys.keys(tenant, stream, pa.array(uniq)), pa.array(hi, pa.float64())],
                               schema=KEY_VALUES_SCHEMA)
    return with_value_lo(out, lo)


def key_values(core, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> pa.Table:
    """Tier.key_values for a ParquetCore. Raises ValueError for another `by`."""
    check_by(by)
    arrow, fs = _arrow_fs(core)
    if arrow:
        return _arrow_key_values(core, fs, tenant, stream, pieces, by)
    union = _union(core, tenant, stream, pieces, by)
    if union is None:
        return KEY_VALUES_SCHEMA.empty_table()
    sql, params = union
    if by == "count":
        t = core.engine.query(f"SELECT g, CAST(sum(x) AS DOUBLE) AS v FROM ({sql}) AS parts GROUP BY g", params)
    else:
        from tiers.parquet_core import exact_sums_sql

        t = core.engine.query(exact_sums_sql(sql, core.engine.name), params)
    if t.num_rows == 0:
        return KEY_VALUES_SCHEMA.empty_table()
    if by == "count":
        v = t["v"]
        values, lo = pa.array(np.asarray(v if isinstance(v, list) else v.to_numpy(), np.float64)), None
    else:
        from tiers.parquet_core import fold_exact_sums

        hi, lo = fold_exact_sums(t)
        values = pa.array(hi)
    out = pa.Table.from_arrays([core.keys.keys(tenant, stream, _ids(t, "g")), values], schema=KEY_VALUES_SCHEMA)
    return out if lo is None else with_value_lo(out, lo)


def with_value_lo(t: pa.Table, lo: np.ndarray) -> pa.Table:
    """key_values' table with `value_lo` (the sums' low parts, Tier.key_values) when any is not 0."""
    return t.append_column("value_lo", pa.array(lo, pa.float64())) if len(lo) and lo.any() else t


def distinct_keys(core, tenant: str, stream: str, pieces: Sequence[Piece]) -> pa.Array:
    """Tier.distinct_keys for a ParquetCore."""
    arrow, fs = _arrow_fs(core)
    if arrow:
        ids, _ = _arrow_rows(core, fs, tenant, stream, pieces, None)
        return core.keys.keys(tenant, stream, pa.array(np.unique(ids))) if len(ids) else pa.array([], pa.string())
    union = _union(core, tenant, stream, pieces, None)
    if union is None:
        return pa.array([], pa.string())
    sql, params = union
    t = core.engine.query(f"SELECT DISTINCT g FROM ({sql}) AS parts", params)
    return core.keys.keys(tenant, stream, _ids(t, "g")) if t.num_rows else pa.array([], pa.string())
