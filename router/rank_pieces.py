"""The rank of a key merged on integer key ids, each immutable piece's column read once.

The vectorised merge of router/rank_merge.py, without its two costs: every tier's key column as
STRINGS (mapped from ids, then dictionary-encoded again to merge), and every piece re-read on every
request. Here:
  * warm, cold and archive give (key id, value) on the shared dictionary's ids (tiers/key_ids.py);
    hot (key strings in Redis) and any tier without those ids give strings, mapped to ids at the
    end (tiers.db.StreamKeyIds, create=False). A string without an id after every read is in no
    id-part of this request (a key's id exists before any tier stores it and never changes), so
    it gets a local id past the largest one. The merge is a bincount on ids; strings appear
    only for the key asked, its group of near-equal values and `around` neighbours.
  * every piece with a data version (Tier.data_versions, tiers/versions.py: a late event, an
    import, a flush, refresh, export, archive or delete that changes what the piece reads changes
    its version in the same transaction / script) is cached in-process under (tier, tenant,
    stream, piece, the tier's owned range, by, version) once closed (cold and archive always, hot
    and warm pieces ending CLOSED_MS before now); the versions are read BEFORE the data, so an
    entry is at least as new as its key says and a stale one is never looked up again. Pieces
    without a version (or still open) are read every time, one call per tier; a closed hot piece
    of several hours is read one hour at a time (router/piece_buckets.py). Behind the
    in-process cache, the results cache's Redis (router/cache.py, when configured) holds the same
    columns under the same keys, so what one router worker or replica read, the others' first
    asks take from Redis (best effort: a failure reads the piece).
The rank itself is rollups.topk.rank_of's (router/rank_merge.rank_in): keys strictly above the
key's group of near-equal values (relative REL_TOL) plus those of the group before it by key.

`fast_rank` returns None — the caller's merge answers and reports — when a tier fails, when the
warm tier (the dictionary) is not configured, or for another `by`.
"""
from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from typing import Callable, Hashable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollups.errors import TierUnavailable
from rollups.exactsum import layered_pair_sum, layered_sum
from rollups.partials import empty_partials
from rollups.timeutil import now_ms
from rollups.topk import REL_TOL, RankResult, Ranked, ordered
from router.planner import Outcome, PieceRun, Plan, Planner
from router import key_dictionary, rank_watch
from router.piece_buckets import per_bucket
from router.rank_merge import _band_rank, rank_in
from tiers import key_ids
from tiers.byte_lru import ByteLRU
from tiers.errors import translate

#: hot and warm pieces are stored once they end this long before now (ms); their versions keep
#: them exact whenever stored, this only keeps open pieces (new version per event) out
CLOSED_MS = 120_000
#: default bytes of the in-process piece cache (setting rank_piece_cache_bytes; 0: off)
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
_ALWAYS = ("cold", "archive")
#: up to this many strings or ids are looked up in PostgreSQL while the dictionary is not loaded
FEW = 2000
#: streams with at most this many keys rank by the id merge, not the threshold algorithm (few_keys;
#: setting topk_merge_keys)
MERGE_KEYS = 8192
#: seconds a stream's "more keys than topk_merge_keys" verdict is kept (few_keys, before its dictionary loads)
SMALL_RECHECK_S = 60.0
#: off: fast_rank always returns None (the string merge, router/rank_merge.py, answers)
ENABLED = True


class _Part:
    """One read: (ids or key strings, values float64); `ids` is set once the strings all had ids;
    `key` the piece cache's key of a closed piece (its data version included), None when open."""

    __slots__ = ("ids", "keys", "values", "key")

    def __init__(self, ids: np.ndarray | None, keys: pa.Array | None, values: np.ndarray):
        self.ids, self.keys, self.values = ids, keys, values
        self.key = None

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + (self.ids.nbytes if self.ids is not None else 0) + (
            self.keys.nbytes if self.keys is not None else 0) + 64


class _Closed:
    """The merge of a request's closed pieces (module doc): the key ids present, each one's total
    as Neumaier's (sum, compensation) — `lo` None when every addition was exact (counts, integer
    sums) — for the piece cache (it tells its .nbytes)."""

    __slots__ = ("ids", "hi", "lo")

    def __init__(self, ids: np.ndarray, hi: np.ndarray, lo: np.ndarray | None):
        self.ids, self.hi, self.lo = ids, hi, lo

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.hi.nbytes + (self.lo.nbytes if self.lo is not None else 0) + 64


#: an LRU of _Part by bytes, thread-safe (every _Part tells its .nbytes)
PieceCache = ByteLRU


_CACHES_LOCK = threading.Lock()


def cache_of(planner: Planner) -> PieceCache | None:
    """The planner's piece cache (one per router app, held by the planner itself), None when off."""
    with _CACHES_LOCK:
        cache = getattr(planner, "_rank_piece_cache", None)
        if cache is None:
            size = _setting()
            if size <= 0:
                return None
            cache = PieceCache(size)
            planner._rank_piece_cache = cache
        return cache


def _setting() -> int:
    try:
        from router import context
        return int(getattr(context.get().settings, "rank_piece_cache_bytes", DEFAULT_CACHE_BYTES))
    except Exception:  # outside a request (tools, tests calling the router directly)
        return DEFAULT_CACHE_BYTES


def _read(tier, spec, pieces, by: str) -> _Part:
    got = key_ids.id_values(tier, spec.tenant, spec.stream, pieces, by)
    if got is not None:
        return _Part(got[0], None, got[1])
    t = tier.key_values(spec.tenant, spec.stream, pieces, by)
    keys = t["key"].combine_chunks().cast(pa.string()) if t.num_rows else pa.array([], pa.string())
    values = t["value"].to_numpy().astype(np.float64) if t.num_rows else np.zeros(0)
    if "value_lo" in t.column_names:  # the hot tier's exact sums: low parts join as more terms (rollups.pairsum)
        lo = t["value_lo"].to_numpy().astype(np.float64)
        at = np.flatnonzero(lo)
        keys, values = pa.concat_arrays([keys, keys.take(pa.array(at))]), np.concatenate([values, lo[at]])
    return _Part(None, keys, values)


def _versions(planner: Planner, plan: Plan) -> dict[int, Hashable]:
    """{piece index: version} of the pieces whose tier can tell (read before any data)."""
    by_tier: dict[str, list[int]] = {}
    for i, pp in enumerate(plan.pieces):
        tier = planner.tiers[pp.tier]
        if hasattr(tier, "supports") and tier.supports("data_versions"):
            by_tier.setdefault(pp.tier, []).append(i)
    if len(by_tier) > 1:
        futures = {t: planner.pool.submit(planner._versions, plan, t, idx) for t, idx in by_tier.items()}
        found = {t: f.result(timeout=planner.timeout_s) for t, f in futures.items()}
    else:
        found = {t: planner._versions(plan, t, idx) for t, idx in by_tier.items()}
    out: dict[int, Hashable] = {}
    for name, idx in by_tier.items():
        got = found[name]
        if got is None or len(got) != len(idx):
            continue
        for i, v in zip(idx, got):
            if v is not None:
                out[i] = v
    return out


def _run(planner: Planner, tasks: list[Callable[[], _Part]]) -> list[tuple[_Part, float]]:
    def timed(task):
        started = time.perf_counter()
        part = task()
        return part, (time.perf_counter() - started) * 1000

    if len(tasks) == 1:
        return [timed(tasks[0])]
    futures = [planner.pool.submit(timed, t) for t in tasks]
    try:
        return [f.result(timeout=planner.timeout_s) for f in futures]
    except cf.TimeoutError:
        raise TierUnavailable("router", f"A tier did not answer within {planner.timeout_s:g} s.") from None
    finally:
        for f in futures:
            f.cancel()


def read_parts(planner: Planner, plan: Plan, by: str, names=None) -> tuple[list[_Part], list[PieceRun], int]:
    """Every piece's (ids | keys, values): cached parts, closed pieces read one by one (then
    stored; hot's hours and days one bucket at a time, `per_bucket`; with `names` (_Names), a
    closed piece read as strings is stored with its ids, so the next process need not map it),
    the rest one call per tier,
    concurrently; with the runs for meta (one per piece of the plan: the slowest read of its
    buckets) and the number of pieces (buckets) from the cache. A piece from this in-process
    cache says `cached: false, took_ms: 0` in meta.segments (`cached: true` means the whole answer
    came from the results cache, API.md); meta.ranking.pieces_cached counts them. Raises
    TierUnavailable."""
    spec, cache, now = plan.spec, cache_of(planner), now_ms()
    cut, origin = per_bucket(plan, now, CLOSED_MS)
    parts, runs, hits = _read_parts(planner, cut, by, spec, cache, now, names)
    if cut is plan:
        return parts, runs, hits
    by_origin: dict[int, PieceRun] = {}
    for i, run in zip(origin, runs):
        pp = plan.pieces[i]
        seen = by_origin.get(i)
        took = run.took_ms if seen is None else max(seen.took_ms or 0.0, run.took_ms or 0.0)
        by_origin[i] = PieceRun(pp.tier, pp.piece, False, took)
    return parts, [by_origin[i] for i in sorted(by_origin)], hits


def _read_parts(planner: Planner, plan: Plan, by: str, spec, cache, now: int,
                names=None) -> tuple[list[_Part], list[PieceRun], int]:
    versions = _versions(planner, plan) if cache is not None else {}
    parts: list[_Part] = []
    runs: list[PieceRun | None] = [None] * len(plan.pieces)
    tasks, after = [], []  # after[j]: (piece indices, cache key or None) of tasks[j]
    rest: dict[str, list[int]] = {}
    hits = 0
    closed: list[tuple[int, Hashable]] = []
    for i, pp in enumerate(plan.pieces):
        if i in versions and (pp.tier in _ALWAYS or pp.piece.range.end <= now - CLOSED_MS):
            owned = plan.snapshot.owns(pp.tier)
            p = pp.piece
            closed.append((i, (pp.tier, spec.tenant, spec.stream, p.granularity.name, p.range.start, p.range.end,
                               owned.start, owned.end, by, versions[i])))
        else:
            rest.setdefault(pp.tier, []).append(i)
    local = [cache.get(key) for _, key in closed]
    shared = _shared_get(planner, [key for (_, key), hit in zip(closed, local) if hit is None])
    for (i, key), hit in zip(closed, local):
        pp = plan.pieces[i]
        if hit is None and key in shared:
            hit = shared[key]
            cache.put(key, hit)
        if hit is not None:
            hit.key = key
            parts.append(hit)
            runs[i] = PieceRun(pp.tier, pp.piece, False, 0.0)
            hits += 1
            continue
        tier = planner.tiers[pp.tier]
        tasks.append(lambda tier=tier, p=pp.piece: _read(tier, spec, [p], by))
        after.append(([i], key))
    for name, idx in rest.items():
        tier = planner.tiers[name]
        tasks.append(lambda tier=tier, idx=idx: _read(tier, spec, [plan.pieces[i].piece for i in idx], by))
        after.append((idx, None))
    fresh = []
    for (idx, key), (part, took) in zip(after, _run(planner, tasks) if tasks else []):
        parts.append(part)
        if key is not None:
            part.key = key
            cache.put(key, part)
            fresh.append((key, part))
        for i in idx:
            runs[i] = PieceRun(plan.pieces[i].tier, plan.pieces[i].piece, False, took)
    # closed parts read as strings get their shared ids once (set on the cached part: a repeat, or
    # a hot window sliding by an hour, merges on ids); only open edges are mapped per request
    if names is not None and any(part.ids is None for _, part in fresh):
        names.map_parts([part for _, part in fresh], shared=True)  # sets the ids of parts whose strings all have one
    _shared_put(planner, fresh)
    return parts, [r for r in runs if r is not None], hits


_SHARED = "rank_piece"


def _shared_get(planner: Planner, keys: list[Hashable]) -> dict[Hashable, _Part]:
    """The parts the shared results cache (router/cache.py: Redis, shared by every router worker
    and replica) holds for these piece keys; {} without one or when it fails (then read)."""
    shared = getattr(planner, "cache", None)
    if not keys or shared is None:
        return {}
    try:
        tables = shared.get_many([(_SHARED, *key) for key in keys])
    except Exception:  # the cache is an optimisation: a failure reads the pieces
        return {}
    out = {}
    for key, t in zip(keys, tables):
        if t is None:
            continue
        values = t["value"].to_numpy()
        if "id" in t.column_names:
            out[key] = _Part(t["id"].to_numpy(), None, values)
        else:
            out[key] = _Part(None, t["key"].combine_chunks(), values)
    return out


def _shared_put(planner: Planner, items: list[tuple[Hashable, _Part]]) -> None:
    shared = getattr(planner, "cache", None)
    if not items or shared is None:
        return
    tables = []
    for key, part in items:
        col = {"id": pa.array(part.ids, pa.int64())} if part.ids is not None else {"key": part.keys}
        tables.append(((_SHARED, *key), pa.table({**col, "value": pa.array(part.values, pa.float64())})))
    try:
        shared.put_many(tables)
    except Exception:  # best effort, as the results cache itself
        pass


class _Names:
    """Key strings <-> ids for one request: the shared dictionary's ids (router/key_dictionary.py:
    the process's snapshot as Arrow columns, what it lacks looked up in PostgreSQL), and local ids
    (from `base` on) for the strings without one."""

    def __init__(self, planner: Planner, spec) -> None:
        self.planner = planner
        self.warm = planner.tiers["warm"]
        self.spec = spec
        with translate("warm"):
            self.sid = self.warm.keys.stream_id(spec.tenant, spec.stream)
        self.local: pa.Array = pa.array([], pa.string())
        self.base = 0
        self._dict = None
        self._all_local = False

    def preload(self) -> None:
        """Start loading the stream's dictionary on a background thread (key_dictionary.preload)
        unless loaded: a first ask maps its closed hot parts' strings to ids after reading them,
        and the load (~0.45 s at 500k keys) then overlaps the reads instead of following them."""
        if self.sid is not None:
            key_dictionary.preload(self.planner, self.warm, self.sid)

    def _d(self):
        if self._dict is None:
            self._dict = key_dictionary.dictionary(self.planner, self.warm, self.sid)
        return self._dict

    def _few(self, n: int):
        """The process's dictionary when loaded, or for a few strings / ids what was looked up so far
        (the rest looked up in PostgreSQL by one indexed query, not waiting for every key; the
        whole dictionary loads in the background meanwhile)."""
        if self._dict is None and n <= FEW:
            loaded = key_dictionary.loaded(self.warm, self.sid)
            return loaded if loaded is not None else key_dictionary.partial(self.planner, self.warm, self.sid)
        return self._d()

    def lookup(self, strings: pa.Array) -> np.ndarray:
        """Ids of `strings` (-1: no id yet)."""
        if self.sid is None or not len(strings):
            return np.full(len(strings), -1, np.int64)
        with translate("warm"):
            return key_dictionary.lookup_strings(self.warm, self.sid, self._few(len(strings)), strings)

    def map_parts(self, parts: list[_Part], shared: bool = False) -> list[np.ndarray]:
        """Ids of every part: strings mapped to the dictionary's ids, those without one to local
        ids from `base` (past every dictionary id of the request), the same for the same string.
        Parts of strings only take local ids among themselves unless `shared`.
        The request's `local` and `base` are those of the last call (the merge's, over every part)."""
        todo = [p for p in parts if p.ids is None]
        self.local = pa.array([], pa.string())
        if todo and len(todo) == len(parts) and not shared:
            # strings only (hot alone): local ids among themselves, no dictionary needed
            self._all_local, self.base = True, 0
            self.local = pc.unique(pa.concat_arrays([p.keys.cast(pa.string()) for p in parts]))
            return [pc.index_in(p.keys.cast(pa.string()), value_set=self.local).to_numpy(
                zero_copy_only=False).astype(np.int64) for p in parts]
        self._all_local = False
        mapped: dict[int, np.ndarray] = {}
        unknown: list[pa.Array] = []
        if todo:
            strings = pa.concat_arrays([p.keys.cast(pa.string()) for p in todo])
            found = self.lookup(strings)
            at = 0
            for p in todo:
                ids = found[at:at + len(p.keys)]
                at += len(p.keys)
                if (ids < 0).any():
                    unknown.append(p.keys.filter(pa.array(ids < 0)))
                else:
                    p.ids = ids  # ids never change: a cached part keeps them
                mapped[id(p)] = ids
        out = [p.ids if p.ids is not None else mapped[id(p)] for p in parts]
        self.base = 1 + max((int(a.max()) for a in out if len(a)), default=-1)
        if unknown:
            self.local = pc.unique(pa.concat_arrays(unknown))
            for j, p in enumerate(parts):
                ids = out[j]
                miss = ids < 0
                if miss.any():
                    ids = ids.copy()
                    at = pc.index_in(p.keys.filter(pa.array(miss)), value_set=self.local)
                    ids[miss] = self.base + at.to_numpy(zero_copy_only=False).astype(np.int64)
                    out[j] = ids
        return out

    def id_of(self, key: str) -> int | None:
        at = pc.index(self.local, pa.scalar(key, pa.string())).as_py() if len(self.local) else -1
        if at >= 0:  # a string without an id when the parts were mapped (it may have one by now)
            return self.base + at
        if self._all_local:  # every part's strings are in `local`: the key is in no part
            return None
        got = int(self.lookup(pa.array([key], pa.string()))[0])
        # an id past every id read: the key is in no part
        return got if 0 <= got < self.base else None

    def names(self, ids: np.ndarray) -> pa.Array:
        """The key strings of these ids (same order)."""
        ids = np.asarray(ids, np.int64)
        out = np.empty(len(ids), object)
        shared = ids < self.base
        if shared.any():
            with translate("warm"):
                d = self._few(int(np.count_nonzero(shared)))
                out[shared] = key_dictionary.lookup_ids(self.warm, self.sid, d, ids[shared]).to_numpy(
                    zero_copy_only=False)
        if (~shared).any():
            out[~shared] = pc.take(self.local, pa.array(ids[~shared] - self.base)).to_numpy(zero_copy_only=False)
        return pa.array(out, pa.string())


def _merged(planner: Planner, plan: Plan, by: str) -> tuple[_Names, np.ndarray, np.ndarray, Outcome, dict]:
    """Every key's exact total over the plan: (names, totals by id, present mask by id, outcome
    for meta, meta.ranking info). Raises TierUnavailable."""
    names = _Names(planner, plan.spec)
    names.preload()  # the dictionary's load (a COPY) overlaps the reads; a no-op once loaded
    rank_watch.watch(planner, plan, by)  # the scheduler prefills its closed pieces (scheduler/rank_prefill.py)
    parts, runs, hits = read_parts(planner, plan, by, names)
    info = {"method": "merge", "pieces_cached": hits}
    ids_list = names.map_parts(parts)
    n = names.base + len(names.local)
    layers = _closed_merged(planner, parts, ids_list, by)
    ids = np.concatenate([g for g, _ in layers]) if layers else np.zeros(0, np.int64)
    values = np.concatenate([v for _, v in layers]) if layers else np.zeros(0)
    present = np.bincount(ids, minlength=n) > 0
    if by == "count" or len(values) == 0:
        totals = np.bincount(ids, weights=values, minlength=n)
    else:  # compensated, one numpy pass per piece (no sort of every entry); one bincount when every
        # addition is exact (integers, halves): non-negative terms too, since warm's and hot's low
        # parts (5e14 + 1/32 + 1/32: a tie rounded to even twice) are lost by a plain sum
        totals = layered_sum(layers, n)
    outcome = Outcome(empty_partials("key"), runs, [])
    if planner.on_piece is not None:
        for run in runs:
            planner.on_piece(run.tier, run.piece.granularity.name, run.cached)
    return names, totals, present, outcome, info


def _closed_merged(planner: Planner, parts: list[_Part], ids_list: list[np.ndarray],
                   by: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The merge's layers (key ids, values): the closed pieces' merge as one or two layers, kept
    in the piece cache under the tuple of their keys (each holds its piece's data version, so a
    changed piece makes a new tuple), then every other part as read. A rank over a sliding window
    re-merges its closed pieces once per new closed piece (an hour), not on every request (100M
    bench: 24 hot hours, 2.7M entries, ~25 ms of each request). Parts with local ids (strings
    without a dictionary id) are never in the cached merge."""
    cache = cache_of(planner)
    closed = [j for j, p in enumerate(parts) if p.key is not None and p.ids is not None]
    if cache is None or len(closed) < 2:
        return [(ids_list[j], p.values) for j, p in enumerate(parts)]
    mkey = ("closed_merge", by, tuple(parts[j].key for j in closed))
    merged = cache.get(mkey)
    if merged is None:
        layers = [(parts[j].ids, parts[j].values) for j in closed]
        every = np.concatenate([g for g, _ in layers])
        n = 1 + int(every.max()) if len(every) else 0
        ids = np.flatnonzero(np.bincount(every, minlength=n) > 0)
        if by == "count":
            hi, lo = np.bincount(every, weights=np.concatenate([v for _, v in layers]), minlength=n), None
        else:
            hi, lo = layered_pair_sum(layers, n)
            lo = lo[ids] if lo.any() else None
        merged = _Closed(ids, hi[ids], lo)
        cache.put(mkey, merged)
    others = set(closed)
    out = [(merged.ids, merged.hi)]
    if merged.lo is not None:
        out.append((merged.ids, merged.lo))
    return out + [(ids_list[j], p.values) for j, p in enumerate(parts) if j not in others]


def _usable(planner: Planner, plan: Plan, by: str) -> bool:
    if not ENABLED or by not in ("count", "sum") or plan.absent or not plan.pieces or "warm" not in planner.tiers:
        return False
    return key_ids.shared_ids(planner.tiers["warm"])


def few_keys(planner: Planner, plan: Plan, by: str) -> int | None:
    """The stream's key count when its dictionary holds at most `topk_merge_keys` (setting;
    MERGE_KEYS) keys — an upper bound on the keys of any range —, else None: the process's loaded
    dictionary, or, when not loaded yet, one loaded here if a bounded count says it is that small
    (`_small`). The choice is speed only: both paths are exact. With so few keys the id
    merge (`fast_top_k`: each closed piece's column cached by data version, so a new range reuses
    the pieces an earlier one read) beats the threshold algorithm, whose sorted and random
    accesses are cached only per whole set of pieces and cost a round trip per tier and round:
    2,000 keys, pnl by sum over 6-700 days, 107-337 ms by TA, 23-80 ms merged once the pieces
    were cached (in-process, CI load). Never raises (None)."""
    if not _usable(planner, plan, by):
        return None
    limit = _merge_keys()
    if limit <= 0:
        return None
    try:
        warm = planner.tiers["warm"]
        sid = warm.keys.stream_id(plan.spec.tenant, plan.spec.stream)
        if sid is None:
            return None
        d = key_dictionary.loaded(warm, sid)
        if d is None and _small(warm, sid, limit):  # one COPY of at most `limit` keys
            d = key_dictionary.dictionary(planner, warm, sid)
    except Exception:  # noqa: BLE001 - the threshold algorithm then answers (and reports)
        return None
    return len(d.ids) if d is not None and len(d.ids) <= limit else None


def _small(warm, sid: int, limit: int) -> bool:
    """Whether stream `sid` has at most `limit` keys in the dictionary: a count stopped at limit + 1
    (the (stream_id, key) index), its verdict kept SMALL_RECHECK_S per process. Raises psycopg errors."""
    seen = getattr(warm, "_merge_small", None)
    if seen is None:
        seen = warm._merge_small = {}
    now = time.monotonic()
    hit = seen.get(int(sid))
    if hit is not None and now - hit[1] < SMALL_RECHECK_S:
        return hit[0]
    with warm.pool.connection() as conn:
        n = conn.execute("SELECT count(*) FROM (SELECT 1 FROM keys WHERE stream_id = %s LIMIT %s) AS k",
                         (int(sid), limit + 1)).fetchone()[0]
    seen[int(sid)] = (n <= limit, now)
    return n <= limit


def _merge_keys() -> int:
    try:
        from router import context
        return int(getattr(context.get().settings, "topk_merge_keys", MERGE_KEYS))
    except Exception:  # outside a request (tools, tests calling the router directly)
        return MERGE_KEYS


def fast_rank(planner: Planner, plan: Plan, key: str, by: str,
              around: int) -> tuple[RankResult, Outcome, dict] | None:
    """The exact rank of `key` over the plan (RankResult as rollups.topk.rank_of, the outcome for
    meta, meta.ranking {"method": "merge", "pieces_cached": n}; module doc), or None when this
    path cannot answer (the caller merges and reports)."""
    if not _usable(planner, plan, by):
        return None
    try:
        names, totals, present, outcome, info = _merged(planner, plan, by)
        total = int(np.count_nonzero(present))
        kid = names.id_of(key)
        if kid is None or kid >= len(present) or not present[kid]:
            return RankResult(None, None, total, []), outcome, info
        pid = np.flatnonzero(present)
        vals = totals[pid]
        v = float(totals[kid])
        if around <= 0:
            rank = _group_rank(names, pid, vals, key, v)
            if rank is not None:
                return RankResult(rank, v, total, [Ranked(rank, key, v)]), outcome, info
        return rank_in(names.names(pid), vals, key, around), outcome, info
    except TierUnavailable:
        return None


def fast_top_k(planner: Planner, plan: Plan, k: int, by: str) -> tuple[list[Ranked], Outcome, dict] | None:
    """The exact top k over the plan (rollups.topk.top_k's order: value descending, values within
    REL_TOL of their neighbour one group ordered by key), merged on key ids like fast_rank — the
    fallback when the threshold algorithm cannot answer (a negative k-th total, flat data). Strings
    are fetched only for the top groups: every key whose value is at least the k-th best, and
    further down while the next lower value is within REL_TOL of the lowest taken (a group that
    chains on), so the set taken is whole groups and its order is the full order's prefix.
    None when this path cannot answer (the caller merges and reports)."""
    if k <= 0 or not _usable(planner, plan, by):
        return None
    try:
        names, totals, present, outcome, info = _merged(planner, plan, by)
        pid = np.flatnonzero(present)
        vals = totals[pid]
        if len(vals) > k:
            floor = float(np.partition(vals, len(vals) - k)[len(vals) - k])
            for _ in range(64):
                below = vals[vals < floor]
                if not len(below):
                    break
                x = float(below.max())
                if floor - x > REL_TOL * max(abs(floor), abs(x)):
                    break
                floor = x
            else:  # a long chain of near-equal values: order them all
                floor = -np.inf
            take = vals >= floor
            pid, vals = pid[take], vals[take]
        t = ordered(pa.table({"key": names.names(pid), "value": pa.array(vals, pa.float64())})).slice(0, k)
        ranked = [Ranked(i + 1, key, value) for i, (key, value) in
                  enumerate(zip(t["key"].to_pylist(), t["value"].to_pylist()))]
        return ranked, outcome, info
    except TierUnavailable:
        return None


def _group_rank(names: _Names, pid: np.ndarray, vals: np.ndarray, key: str, v: float) -> int | None:
    """rank_merge._band_rank with strings only for the values within 2 * SPAN of v: the keys
    farther above count by value alone, and _band_rank's check that the key's group does not
    chain on out of its band sees the nearest values on either side (they lie in the sub-band
    whenever any value lies between SPAN and 2 * SPAN away; farther ones are apart)."""
    from router.rank_merge import SPAN

    near = np.abs(vals - v) <= 2 * SPAN * abs(v)
    rank = _band_rank(names.names(pid[near]), vals[near], key, v)
    if rank is None:
        return None
    return int(np.count_nonzero(vals > v + 2 * SPAN * abs(v))) + rank
