"""Exact rows and bytes per tier and per stream, from each tier's cheapest exact source
(GET /v1/tiers, GET /v1/streams).

`rows` of a tier are the events in the range the catalog gives it (`owned`), so the tiers' rows add
up to every event stored, with none counted twice (warm also holds raw copies of hot's range and a
source keeps what it handed over for a grace period; neither is counted). `bytes` is what the tier
occupies. Sources:
  hot      Redis: the stream-wide minute totals (`<prefix>1m:total:count`, member = minute start,
           never expiring) of the minutes at or above b_warm; bytes: Redis' used_memory_dataset
           (the whole database server: the log and caches included); per stream: null.
  warm     the stream-wide total_1m/1h/1d rollups over the cover of the owned range (as of the
           last refresh, which is what warm answers queries from); bytes: the relations' sizes on
           disk (tier only: the tables are shared by every stream).
  cold     Parquet footers (num_rows of each day's raw file; a day cut by a boundary counts its ts
           column) and file sizes on disk.
  archive  the registry (table archive_partitions: raw_rows and object sizes of the manifests).
Every function raises TierUnavailable(tier) when its service is down.
"""
from __future__ import annotations

import os
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

import pyarrow.compute as pc
import pyarrow.parquet as pq

from rollups.cover import cover
from rollups.timeutil import DAY_MS, G1D, G1H, G1M, MAX_MS, MIN_MS, TimeRange
from tiers import parquet_layout as PL
from tiers.cold_topk import FooterCache
from tiers.errors import translate

StreamId = tuple[str, str]
_FOOTERS = FooterCache(4096)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TOTALS = {G1M.name: "total_1m", G1H.name: "total_1h", G1D.name: "total_1d"}


def _dt(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=min(max(ms, MIN_MS), MAX_MS))


# ---- hot --------------------------------------------------------------------------------------

def hot_rows(hot, owned: TimeRange, tenant: str | None = None, stream: str | None = None) -> dict[StreamId, int]:
    """Events per (tenant, stream) that hot holds at or above owned.start (the minute totals)."""
    from tiers.hot import _TENANTS_KEY, _prefix

    client = hot._client
    with translate("hot"):
        tenants = [tenant] if tenant is not None else sorted(t.decode() for t in client.smembers(_TENANTS_KEY))
        ids = [(t, s) for t in tenants for s in ([stream] if stream is not None else hot.streams(t))]
        pipe = client.pipeline(transaction=False)
        for t, s in ids:
            pipe.zrange(_prefix(t, s) + "1m:total:count", 0, -1, withscores=True)
        replies = pipe.execute() if ids else []
    out = {}
    for sid, members in zip(ids, replies):
        out[sid] = int(sum(n for start, n in members if owned.start <= int(start) < owned.end))
    return out


def hot_bytes(hot) -> int:
    with translate("hot"):
        client = hot._client
        if hasattr(client, "get_primaries"):  # Redis Cluster: the sum over every master
            from redis.cluster import RedisCluster

            infos = client.info("memory", target_nodes=RedisCluster.PRIMARIES)
            infos = [infos] if "used_memory_dataset" in infos else list(infos.values())
            return sum(int(i["used_memory_dataset"]) for i in infos)
        return int(client.info("memory")["used_memory_dataset"])


# ---- warm -------------------------------------------------------------------------------------

def warm_rows(warm, owned: TimeRange, tenant: str | None = None, stream: str | None = None) -> dict[StreamId, int]:
    """Events per (tenant, stream) in warm's rollups over `owned` (stream-wide totals)."""
    pieces = cover(owned, (G1M, G1H, G1D)) if not owned.empty else []
    out: dict[StreamId, int] = defaultdict(int)
    where, params = "", []
    if tenant is not None:
        where += " AND s.tenant = %s"
        params.append(tenant)
    if stream is not None:
        where += " AND s.stream = %s"
        params.append(stream)
    with translate("warm"), warm.pool.connection() as conn:
        for p in pieces:
            sql = (f"SELECT s.tenant, s.stream, sum(t.count)::bigint FROM {_TOTALS[p.granularity.name]} t "
                   f"JOIN streams s ON s.id = t.stream_id WHERE t.bucket >= %s AND t.bucket < %s{where} GROUP BY 1, 2")
            for t, s, n in conn.execute(sql, (_dt(p.range.start), _dt(p.range.end), *params)):
                out[(t, s)] += int(n)
    return dict(out)


def warm_bytes(warm) -> int:
    with translate("warm"):
        return int(warm.stats()["bytes"])


# ---- cold -------------------------------------------------------------------------------------

def _day_rows(path: Path, day: int, owned: TimeRange) -> int:
    if owned.start <= day and day + DAY_MS <= owned.end:
        pf = _FOOTERS.get(str(path))
        return 0 if pf is None else pf.metadata.num_rows
    ts = pq.read_table(path, columns=["ts"])["ts"].cast("int64")
    inside = pc.and_(pc.greater_equal(ts, owned.start), pc.less(ts, owned.end))
    return int(pc.sum(inside.cast("int64")).as_py() or 0)


def _folder_bytes(folders: Iterable[Path]) -> int:
    total = 0
    for folder in folders:
        for dirpath, _, files in os.walk(folder):
            for f in files:
                try:
                    total += os.stat(os.path.join(dirpath, f)).st_size
                except FileNotFoundError:  # replaced while we walked
                    pass
    return total


def cold_sizes(cold, owned: TimeRange, tenant: str | None = None,
               stream: str | None = None) -> dict[StreamId, tuple[int, int]]:
    """(rows in `owned`, bytes of every file) per (tenant, stream) of the cold tier."""
    out = {}
    with translate("cold"):
        tables = [p for p in cold.root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))] \
            if cold.root.is_dir() else []
        for t, s in cold.partitions.tenants_streams(tenant, stream):
            rows = 0
            for day in cold.partitions.days(t, s):
                if day + DAY_MS > owned.start and day < owned.end:
                    rows += _day_rows(cold.layout.raw_file(t, s, day), day, owned)
            folders = [table / f"tenant={PL.escape(t)}" / f"stream={PL.escape(s)}" for table in tables]
            out[(t, s)] = (rows, _folder_bytes(folders))
    return out


# ---- archive ----------------------------------------------------------------------------------

def archive_sizes(archive, owned: TimeRange, tenant: str | None = None,
                  stream: str | None = None) -> dict[StreamId, tuple[int, int]]:
    """(raw rows of the archived days in `owned`, object bytes) per (tenant, stream), from the registry."""
    where, params = "", [owned.start, owned.end]
    if tenant is not None:
        where += " AND tenant = %s"
        params.append(tenant)
    if stream is not None:
        where += " AND stream = %s"
        params.append(stream)
    sql = ("SELECT tenant, stream, coalesce(sum(raw_rows) FILTER (WHERE period IN ('day', 'pack') "
           "AND start_ms >= %s "
           "AND end_ms <= %s), 0)::bigint, coalesce(sum((SELECT sum((o ->> 'size')::bigint) "
           "FROM jsonb_array_elements(manifest -> 'objects') AS o)), 0)::bigint "
           f"FROM archive_partitions WHERE status = 'archived'{where} GROUP BY 1, 2")
    with translate("archive"), archive.pool.connection() as conn:
        return {(t, s): (int(r), int(b)) for t, s, r, b in conn.execute(sql, params)}


# ---- every tier -------------------------------------------------------------------------------

def tier_sizes(name: str, tier, owned: TimeRange, tenant: str | None = None,
               stream: str | None = None) -> dict[str, Any]:
    """{"rows", "bytes", "streams": {(tenant, stream): (rows, bytes or None)}} of one tier; `bytes` is
    the tier's whole size when neither tenant nor stream is given, else the streams' sum (None where
    the tier cannot tell streams apart)."""
    whole = tenant is None and stream is None
    if name == "hot":
        per = {k: (v, None) for k, v in hot_rows(tier, owned, tenant, stream).items()}
        size = hot_bytes(tier) if whole else None
    elif name == "warm":
        per = {k: (v, None) for k, v in warm_rows(tier, owned, tenant, stream).items()}
        size = warm_bytes(tier) if whole else None
    elif name == "cold":
        per = cold_sizes(tier, owned, tenant, stream)
        size = sum(b for _, b in per.values())
    elif name == "archive":
        per = archive_sizes(tier, owned, tenant, stream)
        size = sum(b for _, b in per.values())
    else:
        raise ValueError(f"unknown tier {name!r}")
    return {"rows": sum(r for r, _ in per.values()), "bytes": size, "streams": per}
