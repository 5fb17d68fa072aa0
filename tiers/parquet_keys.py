"""The key column and one value column of the Parquet tiers (cold, archive): Tier.key_values and
Tier.distinct_keys over tiers.parquet_core.ParquetCore.

The same scans as ParquetCore.aggregate, projected to key_id and the one value (count or sum; the
engine reads only those columns of the files, dictionary-encoded key ids), grouped by key_id in
the engine (DuckDB's fsum: compensated) — or DISTINCT key_id for the keys alone. Ids become
strings through the tier's key dictionary, vectorised.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from rollups.cover import Piece
from tiers.base import KEY_VALUES_SCHEMA
from tiers.ranked_access import check_by


def _union(core, tenant: str, stream: str, pieces: Sequence[Piece], by: str | None) -> tuple[str, list] | None:
    """UNION ALL over the pieces of (g key_id[, x count or sum]) and its parameters; None: no file."""
    from tiers.parquet_core import _Listed

    fsum = "fsum" if core.engine.name == "duckdb" else "sum"
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
        elif raw:
            x = ", count(*) AS x" if by == "count" else f", {fsum}(value) AS x"
        else:
            x = f', "{by}" AS x'
        group = " GROUP BY 1" if raw and by is not None else ""
        subs.append(f"SELECT key_id AS g{x} FROM {src}{col} >= ? AND {col} < ?{group}")
        params.extend([*src_params, piece.range.start, piece.range.end])
    if not subs:
        return None
    return " UNION ALL ".join(subs), params


def _ids(t: pa.Table, name: str) -> pa.Array:
    col = t[name]
    return pa.array(col if isinstance(col, list) else col.to_numpy(), pa.int64()) if len(col) else pa.array([], pa.int64())


def key_values(core, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> pa.Table:
    """Tier.key_values for a ParquetCore. Raises ValueError for another `by`."""
    check_by(by)
    union = _union(core, tenant, stream, pieces, by)
    if union is None:
        return KEY_VALUES_SCHEMA.empty_table()
    sql, params = union
    agg = 'CAST(sum(x) AS DOUBLE)' if by == "count" else (
        "CAST(fsum(x) AS DOUBLE)" if core.engine.name == "duckdb" else "CAST(sum(x) AS DOUBLE)")
    t = core.engine.query(f"SELECT g, {agg} AS v FROM ({sql}) AS parts GROUP BY g", params)
    if t.num_rows == 0:
        return KEY_VALUES_SCHEMA.empty_table()
    v = t["v"]
    values = pa.array(np.asarray(v if isinstance(v, list) else v.to_numpy(), np.float64))
    return pa.Table.from_arrays([core.keys.keys(tenant, stream, _ids(t, "g")), values], schema=KEY_VALUES_SCHEMA)


def distinct_keys(core, tenant: str, stream: str, pieces: Sequence[Piece]) -> pa.Array:
    """Tier.distinct_keys for a ParquetCore."""
    union = _union(core, tenant, stream, pieces, None)
    if union is None:
        return pa.array([], pa.string())
    sql, params = union
    t = core.engine.query(f"SELECT DISTINCT g FROM ({sql}) AS parts", params)
    return core.keys.keys(tenant, stream, _ids(t, "g")) if t.num_rows else pa.array([], pa.string())
