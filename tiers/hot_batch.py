"""The hot tier's ingest batch, pre-aggregated in numpy and encoded as hot_ingest.lua's ARGV
(tiers/hot.py `RedisHotTier._run`; the layout is `_Batch.encode`'s docstring)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from rollups.pairsum import pair_reduceat
from rollups.timeutil import G1D, G1H, G1M, Granularity
from tiers.hot_dedup import DIGEST, first_occurrences
from tiers.hot_sums import off_grid

@dataclass
class _Groups:
    """Partial aggregates of events grouped by (stream, bucket, key), sorted in that order."""

    s: np.ndarray   # stream index
    b: np.ndarray   # bucket start (epoch ms; 0 for all-time)
    k: np.ndarray   # key index
    c: np.ndarray   # count
    sm: np.ndarray  # sum: the float nearest the exact sum of the values (tiers/hot_sums.py)
    mn: np.ndarray
    mx: np.ndarray
    sl: np.ndarray  # the sum's low part: sm + sl is the exact sum to ~eps^2 (0 for exact sums)

    @classmethod
    def of_events(cls, s, k, ts, v) -> "_Groups":
        return cls(s, ts, k, np.ones(len(s), np.int64), v, v, v, np.zeros(len(s)))

    def regroup(self, width: int | None) -> "_Groups":
        """Coarser groups: buckets of `width` ms (None = one all-time bucket)."""
        b = self.b - self.b % width if width else np.zeros_like(self.b)
        order = np.lexsort((self.k, b, self.s))
        s, b, k = self.s[order], b[order], self.k[order]
        starts = _run_starts(s, b, k)
        if not len(starts):
            return self
        sm, sl = pair_reduceat(self.sm[order], self.sl[order], starts)
        return _Groups(s[starts], b[starts], k[starts], np.add.reduceat(self.c[order], starts),
                       sm, np.minimum.reduceat(self.mn[order], starts),
                       np.maximum.reduceat(self.mx[order], starts), sl)

    def select(self, mask: np.ndarray) -> "_Groups":
        return _Groups(*(getattr(self, f)[mask] for f in ("s", "b", "k", "c", "sm", "mn", "mx", "sl")))


def _run_starts(*columns: np.ndarray) -> np.ndarray:
    """Indexes where the (sorted) tuple of columns changes, 0 included."""
    n = len(columns[0])
    if n == 0:
        return np.zeros(0, np.int64)
    new = np.zeros(n, bool)
    new[0] = True
    for col in columns:
        new[1:] |= col[1:] != col[:-1]
    return np.flatnonzero(new)


class _Marks:
    """The folded marks this process has seen above their bucket's start (others are the start):
    a batch is pre-aggregated against them, and the ingest script says when one has moved."""

    def __init__(self) -> None:
        self._marks: dict[tuple[str, str, int], int] = {}

    def get(self, prefix: str, g: str, start: int) -> int:
        return self._marks.get((prefix, g, start), start)

    def learn(self, prefix: str, g: str, start: int, mark: int) -> None:
        if mark > start:
            if len(self._marks) >= 10_000:  # old buckets' marks are never asked again
                self._marks.clear()
            self._marks[(prefix, g, start)] = mark
        else:
            self._marks.pop((prefix, g, start), None)


@dataclass
class _Batch:
    """A batch's columns as numpy arrays, streams and keys dictionary-encoded."""

    streams: list[str]
    keys: np.ndarray   # distinct keys (object array of str)
    s: np.ndarray
    k: np.ndarray
    ts: np.ndarray
    v: np.ndarray
    live: np.ndarray     # bool per event: False for the duplicates (counted nowhere)
    id_rows: np.ndarray  # the live events carrying an id (checked against the dedup sets in Lua)
    digests: np.ndarray  # their ids' digests (tiers/hot_dedup.py DIGEST: 16 raw bytes), parallel to id_rows

    @classmethod
    def of(cls, events: pa.Table, *, dedup: bool) -> "_Batch":
        s = pc.dictionary_encode(events.column("stream").combine_chunks())
        k = pc.dictionary_encode(events.column("key").combine_chunks())
        id_col = events.column("id")
        live = np.ones(events.num_rows, bool)
        id_rows, digests = np.zeros(0, np.int64), np.empty(0, DIGEST)
        if dedup and id_col.null_count < events.num_rows:
            s_idx = s.indices.to_numpy().astype(np.int64)
            id_rows, digests = first_occurrences(s_idx, id_col, live)
        return cls(s.dictionary.to_pylist(), k.dictionary.to_numpy(zero_copy_only=False),
                   s.indices.to_numpy().astype(np.int64), k.indices.to_numpy().astype(np.int64),
                   events.column("ts").to_numpy(), events.column("value").to_numpy(), live, id_rows, digests)

    @property
    def dups(self) -> list[int]:
        """Rows of the duplicates, ascending."""
        return np.flatnonzero(~self.live).tolist()

    def drop(self, found: Sequence) -> None:
        """Mark as duplicates the events hot_ingest.lua found in its dedup sets: `found` lists
        (stream index, 0-based position among that stream's digests) pairs, as encoded."""
        per_stream = self._id_sections()
        gone = np.zeros(len(self.id_rows), bool)
        for i in range(0, len(found), 2):
            at = per_stream[int(found[i]) - 1]
            gone[at[int(found[i + 1])]] = True
        self.live[self.id_rows[gone]] = False
        self.id_rows, self.digests = self.id_rows[~gone], self.digests[~gone]

    def _id_sections(self) -> dict[int, np.ndarray]:
        """Stream index (0-based) -> positions in id_rows of that stream's id events, in order."""
        s = self.s[self.id_rows]
        return {int(x): np.flatnonzero(s == x) for x in np.unique(s)}

    def encode(self, mode: str, tenant: str, prefixes: list[str], now_ms: int, floor: float, safety_ttl: int,
               dedup_px: int, log: bytes, rank_key: str | None, marks: _Marks) -> list:
        """ARGV of hot_ingest.lua:
            mode, tenant, now, expected floor, min ts of the events aggregated (+inf: none), min ts
            of the batch, dedup px, safety TTL (ms), log entry data, rank stream index (0: none), rank
            key, stream count, (name, key prefix) per stream,
            mark count, (stream index, granularity, start, expected folded mark) per 1h/1d bucket
                of the events at or above the floor,
            duplicate count, JSON list of the duplicates' rows (the log entry's `dups`),
            dedup section count, per stream with ids: stream index, n, its n id digests (16 bytes
                each) concatenated in one argument,
            bucket count, per bucket: stream index, granularity, start, same (1: every key's sum
                is its count), n singles (keys counted once), n others, total count, sum, min,
                max, the total sum's low part, flags (1: other sums' low parts follow; 2: some
                sum is off tiers/hot_sums.GRID), keys (singles first), single values (unless
                same), other counts, other sums (unless same), other mins, other maxs, other
                sums' low parts (flag 1),
            all-time section count, per stream: stream index, its pending entry (JSON [keys,
                counts] or [keys, counts, sums] when some sum differs, [keys, counts, sums, low
                parts] when some low part is not 0: _encode_alltime).
        Stream indexes are 1-based. The events with ids are aggregated with the others: the script
        writes nothing when one of their ids is in a dedup set (it returns which: `drop` them).
        Minute buckets list every key; hour and day buckets only the keys of events below their
        folded mark (usually none: their totals only)."""
        plain = self.live  # every event but the duplicates, with an id or without
        ts = self.ts[plain]
        args: list = [mode, tenant, now_ms, floor, int(ts.min()) if len(ts) else 1e300, int(self.ts.min()),
                      dedup_px, safety_ttl, log, 1 if rank_key is not None else 0, rank_key or "",
                      len(self.streams)]
        for name, prefix in zip(self.streams, prefixes):
            args += [name, prefix]
        self._encode_marks(args, prefixes, floor, marks)
        self._encode_ids(args)
        events = _Groups.of_events(self.s[plain], self.k[plain], ts, self.v[plain])
        minutes = events.select(ts >= floor).regroup(G1M.ms)
        sections: list = []
        n_buckets = self._encode_buckets(sections, minutes, minutes, G1M)
        finer = minutes
        for g in (G1H, G1D):
            whole = finer.regroup(g.ms)
            late = _below_marks(finer, g, prefixes, marks)
            n_buckets += self._encode_buckets(sections, whole, finer.select(late).regroup(g.ms) if late is not None
                                              else None, g)
            finer = whole
        args.append(n_buckets)
        args += sections
        alltime = (finer if len(ts) and ts.min() >= floor else events).regroup(None)
        self._encode_alltime(args, alltime)
        return args

    def _encode_marks(self, args: list, prefixes: list[str], floor: float, marks: _Marks) -> None:
        above = self.ts >= floor
        s, ts = self.s[above], self.ts[above]
        rows: list = []
        for g in (G1H, G1D):
            ids = np.unique(_bucket_ids(s, ts - ts % g.ms, g))
            for stream, start in zip(*_from_bucket_ids(ids, g)):
                rows += [stream + 1, g.name, start, marks.get(prefixes[stream], g.name, start)]
        args.append(len(rows) // 4)
        args += rows

    def _encode_ids(self, args: list) -> None:
        dups = self.dups
        args += [len(dups), json.dumps(dups, separators=(",", ":")) if dups else "[]"]
        sections = self._id_sections()
        args.append(len(sections))
        for stream, at in sections.items():
            args += [stream + 1, len(at), self.digests[at].tobytes()]

    def _encode_buckets(self, out: list, whole: _Groups, members: _Groups | None, g: Granularity) -> int:
        """Sections of the buckets of `whole` (groups sorted by stream, bucket, key): totals from
        `whole`, keys from `members` (a subset of its groups, or None: no keys). Which buckets hot
        keeps is the floor's choice (the events below it are not here), never the clock's."""
        starts = _run_starts(whole.s, whole.b)
        if not len(starts):
            return 0
        tsum, tlo = pair_reduceat(whole.sm, whole.sl, starts)
        totals = [x.tolist() for x in (np.add.reduceat(whole.c, starts), tsum,
                                       np.minimum.reduceat(whole.mn, starts), np.maximum.reduceat(whole.mx, starts),
                                       tlo)]
        streams, buckets = (whole.s[starts] + 1).tolist(), whole.b[starts].tolist()
        if members is None or not len(members.s):
            for s, b, tc, tsum, tmin, tmax, tl in zip(streams, buckets, *totals):
                out += [s, g.name, b, 1, 0, 0, tc, tsum, tmin, tmax, tl, 0]
            return len(starts)
        multi = members.c != 1
        order = np.lexsort((members.k, multi, members.b, members.s))  # singles first in each bucket
        members, multi = members.select(order), multi[order]
        member_ids = _bucket_ids(members.s, members.b, g)
        bucket_ids = _bucket_ids(whole.s[starts], whole.b[starts], g)
        lo, hi = np.searchsorted(member_ids, bucket_ids, "left"), np.searchsorted(member_ids, bucket_ids, "right")
        singles = np.concatenate([[0], np.cumsum(~multi)])
        mid = lo + singles[hi] - singles[lo]
        differ = np.concatenate([[0], np.cumsum((members.sm != members.c) | (members.sl != 0))])
        same = (differ[hi] == differ[lo]).tolist()
        lows = np.concatenate([[0], np.cumsum(members.sl != 0)])
        with_lo = (lows[hi] != lows[lo]).tolist()
        off = off_grid(members.sm) | (members.sl != 0)
        offs = np.concatenate([[0], np.cumsum(off)])
        off_any = (offs[hi] != offs[lo]).tolist()
        keys = self.keys[members.k].tolist()
        c, sm, mn, mx = members.c.tolist(), members.sm.tolist(), members.mn.tolist(), members.mx.tolist()
        sl = members.sl.tolist()
        for s, b, i, j, m, eq, wl, og, tc, tsum, tmin, tmax, tl in zip(
                streams, buckets, lo.tolist(), hi.tolist(), mid.tolist(), same, with_lo, off_any, *totals):
            out += [s, g.name, b, int(eq), m - i, j - m, tc, tsum, tmin, tmax, tl, int(wl) + 2 * int(og)]
            out += keys[i:j]
            if not eq:
                out += sm[i:m]
            out += c[m:j]
            if not eq:
                out += sm[m:j]
            out += mn[m:j]
            out += mx[m:j]
            if wl:
                out += sl[m:j]
        return len(starts)

    def _encode_alltime(self, args: list, groups: _Groups) -> None:
        """Per stream: its index and one pending entry (hot_alltime_fold.lua), JSON [keys, counts]
        or [keys, counts, sums] (only when some sum differs from its count)."""
        starts = _run_starts(groups.s)
        args.append(len(starts))
        ends = np.append(starts[1:], len(groups.s)).tolist()
        keys = self.keys[groups.k].tolist()
        c, sm, sl = groups.c.tolist(), groups.sm.tolist(), groups.sl.tolist()
        differ = np.concatenate([[0], np.cumsum((groups.sm != groups.c) | (groups.sl != 0))]).tolist()
        lows = np.concatenate([[0], np.cumsum(groups.sl != 0)]).tolist()
        for lo, hi in zip(starts.tolist(), ends):
            entry = [keys[lo:hi], c[lo:hi]] if differ[hi] == differ[lo] else [keys[lo:hi], c[lo:hi], sm[lo:hi]]
            if lows[hi] != lows[lo]:
                entry.append(sl[lo:hi])
            args += [int(groups.s[lo]) + 1, orjson.dumps(entry)]


_BUCKET_BITS = 33  # bucket numbers of any granularity from year 1 to 9999 fit, offset by 2**32


def _bucket_ids(s: np.ndarray, starts: np.ndarray, g: Granularity) -> np.ndarray:
    """One int64 per (stream, bucket start), increasing with both."""
    return (s << _BUCKET_BITS) + starts // g.ms + (1 << 32)


def _from_bucket_ids(ids: np.ndarray, g: Granularity) -> tuple[list[int], list[int]]:
    return (ids >> _BUCKET_BITS).tolist(), (((ids & ((1 << _BUCKET_BITS) - 1)) - (1 << 32)) * g.ms).tolist()


def _below_marks(groups: _Groups, g: Granularity, prefixes: list[str], marks: _Marks) -> np.ndarray | None:
    """Mask of the (finer) groups whose bucket start lies below the folded mark of their g bucket,
    None when there is none (the common case)."""
    coarse = groups.b - groups.b % g.ms
    mask = None
    for stream, start in zip(*_from_bucket_ids(np.unique(_bucket_ids(groups.s, coarse, g)), g)):
        mark = marks.get(prefixes[stream], g.name, start)
        if mark > start:
            hit = (groups.s == stream) & (coarse == start) & (groups.b < mark)
            mask = hit if mask is None else mask | hit
    return mask if mask is not None and mask.any() else None


