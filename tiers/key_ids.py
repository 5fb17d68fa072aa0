"""A tier's per-key partial count or sum on the shared key ids (no strings), for the router's rank
merge on integers (router/rank_pieces.py).

Warm, cold and archive store key ids of one dictionary (tiers.cold_keys.PgKeyDictionary on the
warm database: a key has the same id in every tier, given once and never changed). Their
Tier.key_values reads the ids and maps them to strings; `id_values` here stops before that map:
(ids int64, values float64), one row per key with events in the pieces, equal to key_values with
each key replaced by its id; sums kept as exact pairs (warm's, cold's and the archive's sum_lo)
give a key's non-zero low part as one more row of that key (router/rank_pieces.py adds them). Tiers without ids in that dictionary (hot: Redis members are the key
strings; a Parquet tier on another dictionary) give None: the caller uses Tier.key_values.
Errors: TierUnavailable(tier) when the service is down (tiers.errors.translate); ValueError for a
`by` other than count or sum.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from rollups.cover import Piece
from tiers.errors import translate
from tiers.ranked_access import check_by

IdValues = tuple[np.ndarray, np.ndarray]


def _empty() -> IdValues:
    return np.zeros(0, np.int64), np.zeros(0, np.float64)


def shared_ids(tier) -> bool:
    """Whether `tier` stores ids of the shared PostgreSQL dictionary (warm, cold, archive)."""
    from tiers.cold_keys import PgKeyDictionary

    if tier.name == "warm":
        return hasattr(tier, "keys") and hasattr(tier, "key_names")
    core = getattr(tier, "core", None)
    return core is not None and isinstance(getattr(core, "keys", None), PgKeyDictionary)


def id_values(tier, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> IdValues | None:
    """(key ids, values) of every key with events in the union of `pieces` (module doc), or None
    when the tier has no shared ids. Raises TierUnavailable(tier.name), ValueError."""
    check_by(by)
    if not shared_ids(tier):
        return None
    if not pieces:
        return _empty()
    with translate(tier.name):
        if tier.name == "warm":
            return _warm(tier, tenant, stream, pieces, by)
        if hasattr(tier, "require_reachable"):  # the archive: S3 down is 503, even with local copies
            tier.require_reachable()
        return _parquet(tier.core, tenant, stream, pieces, by)


def _warm(warm, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> IdValues:
    from tiers import warm_queries as q
    from tiers.warm_keys import _copy, values_statement
    from tiers.warm_pairs import needs_pairs

    sid = warm.keys.stream_id(tenant, stream)
    shape, params = q.shape_of(pieces)
    if sid is None or not shape:
        return _empty()
    with warm.pool.connection() as conn:
        exact = by == "sum" and needs_pairs(warm, conn, sid)
        t = _copy(conn, values_statement(shape, by, exact, with_lo=exact), {**params, "sid": sid},
                  [pa.int64(), pa.float64()] + ([pa.float64()] if exact else []))
    if t.num_rows == 0:
        return _empty()
    ids = t["c0"].to_numpy().astype(np.int64, copy=False)
    values = t["c1"].to_numpy().astype(np.float64, copy=False)
    if exact:
        # warm's exact pair sums (tiers.warm_pairs): each non-zero low part joins as one more term
        # of its key, as the hot tier's do (router.rank_pieces merges repeated keys exactly)
        lo = t["c2"].to_numpy().astype(np.float64, copy=False)
        at = np.flatnonzero(lo)
        if len(at):
            ids, values = np.concatenate([ids, ids[at]]), np.concatenate([values, lo[at]])
    return ids, values


def _parquet(core, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> IdValues:
    from tiers.cold_topk import group_pairs
    from tiers.parquet_keys import _arrow_fs, _arrow_rows, _ids, _union

    arrow, fs = _arrow_fs(core)
    if arrow:
        ids, xs = _arrow_rows(core, fs, tenant, stream, pieces, by)  # sums: low parts are terms too
        if len(ids) == 0:
            return _empty()
        uniq, hi, lo = group_pairs(ids, xs)
        return _with_low_terms(uniq.astype(np.int64), hi, lo)
    union = _union(core, tenant, stream, pieces, by)
    if union is None:
        return _empty()
    sql, params = union
    if by == "sum":  # exact pairs (tiers.parquet_core.exact_sums_sql)
        from tiers.parquet_core import exact_sums_sql, fold_exact_sums

        t = core.engine.query(exact_sums_sql(sql, core.engine.name), params)
        if t.num_rows == 0:
            return _empty()
        hi, lo = fold_exact_sums(t)
        return _with_low_terms(_ids(t, "g").to_numpy().astype(np.int64), hi, lo)
    t = core.engine.query(f"SELECT g, CAST(sum(x) AS DOUBLE) AS v FROM ({sql}) AS parts GROUP BY g", params)
    if t.num_rows == 0:
        return _empty()
    v = t["v"]
    return (_ids(t, "g").to_numpy().astype(np.int64),
            np.asarray(v if isinstance(v, list) else v.to_numpy(), np.float64))


def _with_low_terms(ids: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> IdValues:
    """(ids, hi) with each non-zero low part one more term of its key (as _warm gives them:
    router.rank_pieces merges repeated keys exactly)."""
    at = np.flatnonzero(lo)
    if not len(at):
        return ids, hi
    return np.concatenate([ids, ids[at]]), np.concatenate([hi, lo[at]])
