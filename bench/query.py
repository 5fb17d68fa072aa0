"""Any range, fast: top-100, rank, series and approx top-100 end to end through HTTP, against DuckDB.

Data (bench/query_data.py): `--events` Zipf(1) events over `--keys` keys and two years, in all four
tiers as the jobs leave them, `--hot-events` of them in the last 24 h (hot); every event also as raw
Parquet. Own Redis database 60, PostgreSQL database tierstore_bench_query, cold folder and API
ports (TIERSTORE_PORT_BASE + 14, + 15). `--keep` reuses a dataset built with the same parameters.

Two `tierstore serve` processes over the same data (1 worker each; only the HTTP API is called):
  uncached   results cache off (results_cache_entries=0, results_cache_ttl=0)
  cached     results cache on (settings' defaults), warmed by one call before timing
Measured (wall time of the HTTP request, median of --repeat calls per query after its first ask,
which is reported apart; when that first ask read the hot tier, compact_hot runs before the
repeats, as the scheduler process (not started here) would within its interval: it builds the
window unions a read leaves to it, hot_window_build_budget):
  top-100 by count and by sum for 1 h, 24 h (ending now), 7 d, 30 d, 90 d, 1 y, 2 y and
  --ranges random arbitrary minute-aligned ranges, uncached and cached; DuckDB over the raw
  Parquet of the same range (GROUP BY key ORDER BY value DESC, key LIMIT 100), answers checked
  identical (API.md: values within relative 1e-12 equal, then key order);
  rank of the keys at ranks 10, 1k, 100k (24 h, 30 d, 1 y, 2 y; by count), checked against DuckDB;
  1-year daily series (count), checked against DuckDB;
  mode=approx top-100 (by count) for 1 y and 2 y against exact: time, every exact value of an
  answered key within its [lower_bound, upper_bound], recall of the exact top-100.
A rich table with each goal of issue 10 and pass/fail; a JSON object on the last line.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... python -m bench.query [--events N] [--keys N]
        [--hot-events N] [--keep] [--ranges 20] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

import duckdb

from bench import support
from bench.query_data import STREAM, Params, build, load_manifest, progress, save_manifest
from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, floor_to, now_ms, parse_time

REDIS_DB, DATABASE = 60, "tierstore_bench_query"
FIXED = (("1h", HOUR_MS), ("24h", DAY_MS), ("7d", 7 * DAY_MS), ("30d", 30 * DAY_MS), ("90d", 90 * DAY_MS),
         ("1y", 365 * DAY_MS), ("2y", 730 * DAY_MS))
RANK_RANGES = ("24h", "30d", "1y", "2y")
RANKS = (10, 1_000, 100_000)
REL = 1e-12


class Raw:
    """DuckDB over the raw Parquet files (the baseline)."""

    def __init__(self, raw_dir: Path) -> None:
        self.con = duckdb.connect()
        self.con.execute("SET threads = 2")
        self.src = f"read_parquet('{raw_dir}/*.parquet')"

    def _q(self, sql: str, params: list) -> tuple[float, list]:
        t = time.perf_counter()
        rows = self.con.execute(sql, params).fetchall()
        return (time.perf_counter() - t) * 1000, rows

    @staticmethod
    def agg(by: str) -> str:
        return "count(*)::DOUBLE" if by == "count" else "fsum(value)"  # compensated, as API.md asks

    def topk(self, a: int, b: int, by: str, k: int = 100) -> tuple[float, list]:
        """(ms, top k in API order): GROUP BY key ORDER BY v DESC, key LIMIT k + 100, so that values
        within relative 1e-12 of the k-th but below it in the last bit are ordered as the API does."""
        ms, rows = self._q(f"SELECT key, {self.agg(by)} AS v FROM {self.src} WHERE ts >= ? AND ts < ? "
                           f"GROUP BY key ORDER BY v DESC, key LIMIT {k + 100}", [a, b])
        return ms, api_order(rows, k)

    def at_ranks(self, a: int, b: int, by: str, ranks) -> tuple[float, dict]:
        ms, rows = self._q(f"SELECT r, key, v, n FROM (SELECT key, v, row_number() OVER (ORDER BY v DESC, key) AS r, "
                           f"count(*) OVER () AS n FROM (SELECT key, {self.agg(by)} AS v FROM {self.src} "
                           f"WHERE ts >= ? AND ts < ? GROUP BY key)) "
                           f"WHERE r IN ({','.join(str(r) for r in ranks)}) OR r = n", [a, b])
        return ms, {r: (key, v, n) for r, key, v, n in rows}

    def values(self, a: int, b: int, by: str, keys: list[str]) -> dict[str, float]:
        _, rows = self._q(f"SELECT key, {self.agg(by)} FROM {self.src} WHERE ts >= ? AND ts < ? AND key IN "
                          f"(SELECT unnest(?)) GROUP BY key", [a, b, keys])
        return dict(rows)

    def daily(self, a: int, b: int) -> tuple[float, dict]:
        ms, rows = self._q(f"SELECT ts // {DAY_MS} * {DAY_MS} AS d, count(*)::DOUBLE FROM {self.src} "
                           f"WHERE ts >= ? AND ts < ? GROUP BY d", [a, b])
        return ms, dict(rows)


def api_order(rows: list, k: int) -> list:
    """The first k of [(key, value)] in API.md's order: value descending, values within relative
    1e-12 of a run's first value equal, ties by key (rows: the raw top, sorted by exact value)."""
    rows = sorted(rows, key=lambda kv: (-kv[1], kv[0]))
    out, run = [], []
    for kv in rows:
        if run and not math.isclose(kv[1], run[0][1], rel_tol=REL):
            out.extend(sorted(run, key=lambda x: x[0]))
            run = []
        run.append(kv)
    out.extend(sorted(run, key=lambda x: x[0]))
    return out[:k]


def same_ranking(api: list, raw: list) -> bool:
    """API items [(key, value)] against the raw answer in api_order: same keys in the same order,
    values within relative 1e-12."""
    return len(api) == len(raw) and all(ka == kb and math.isclose(va, vb, rel_tol=REL)
                                        for (ka, va), (kb, vb) in zip(api, raw))


def timed(fn, repeat: int) -> tuple[float, float, object]:
    """(median ms, first ms, first result) of fn() -> (ms, result), over `repeat` calls."""
    times, first = [], None
    for i in range(repeat):
        ms, res = fn()
        times.append(ms)
        if i == 0:
            first = res
    return statistics.median(times), times[0], first


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] if s else float("nan")


def arbitrary_ranges(n: int, lo: int, hi: int, seed: int = 42) -> list[tuple[str, int, int]]:
    """n minute-aligned ranges in [lo, hi): lengths log-uniform from 10 minutes to the whole span."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        length = int(math.exp(rnd.uniform(math.log(10 * MINUTE_MS), math.log(hi - lo)))) // MINUTE_MS * MINUTE_MS
        a = lo + rnd.randrange(0, max(1, hi - lo - length)) // MINUTE_MS * MINUTE_MS
        out.append((f"r{i:02d}", a, a + max(length, MINUTE_MS)))
    return out


def topk_queries(u, c, raw: Raw, ranges, repeat: int, failures: list) -> list[dict]:
    rows = []
    for label, span, a0, b0 in ranges:
        for by in ("count", "sum"):
            def ends():  # fixed lengths end now (a dashboard's "last N"); arbitrary ranges are fixed
                if span is None:
                    return a0, b0
                end = floor_to(now_ms(), MINUTE_MS)
                return end - span, end

            def ask(server):
                a, b = ends()
                ms, body = server.get("/v1/query/topk", stream=STREAM, k=100, by=by, **{"from": a, "to": b})
                return ms, (a, b, body)

            u_first, (_, _, first_body) = ask(u)  # a fresh range's first ask: reported apart
            if any(seg.get("tier") == "hot" for seg in first_body["meta"].get("segments", [])):
                # what the scheduler's compact_hot does within its interval: the window unions the
                # first ask left to it (hot_window_build_budget) built off the request path
                u.run_job("compact_hot")
            u_ms, _, (a, b, body) = timed(lambda: ask(u), repeat)
            c_first, _ = ask(c)  # fills the cache
            c_ms, _, (_, _, c_body) = timed(lambda: ask(c), repeat)
            c_segs = c_body["meta"].get("segments", [])
            raw_ms, truth = raw.topk(a, b, by)
            got = [(i["key"], i["value"]) for i in body["items"]]
            ok = same_ranking(got, truth)
            if not ok:
                failures.append(f"topk {label} {by}: api {got[:3]}... vs raw {truth[:3]}...")
            meta = body["meta"]
            rows.append({"range": label, "by": by, "from": a, "to": b, "uncached_ms": u_ms, "uncached_first_ms": u_first,
                         "cached_first_ms": c_first, "cached_ms": c_ms, "raw_ms": raw_ms, "identical": ok,
                         "tiers": sorted({s["tier"] for s in meta.get("segments", [])}),
                         "method": (meta.get("ranking") or {}).get("method"), "exact": meta.get("exact"),
                         "cached_segments": f"{sum(1 for x in c_segs if x.get('cached'))}/{len(c_segs)}"})
            progress(f"  topk {label:>4} {by:<5} uncached {u_ms:7.1f} ms (first {u_first:7.1f})  cached {c_ms:6.1f} ms  raw {raw_ms:8.1f} ms"
                     f"  {','.join(rows[-1]['tiers'])}  {rows[-1]['method']}  cached segments {rows[-1]['cached_segments']}  identical={ok}")
    return rows


def rank_queries(u, raw: Raw, repeat: int, failures: list) -> list[dict]:
    rows = []
    end = floor_to(now_ms(), MINUTE_MS)
    for label in RANK_RANGES:
        a, b = end - dict(FIXED)[label], end
        raw_ms, at = raw.at_ranks(a, b, "count", RANKS)
        n = next(iter(at.values()))[2] if at else 0
        for r in RANKS:
            rr = r if r in at else n
            if rr not in at:
                continue
            key, value, _ = at[rr]
            try:
                ms, first, body = timed(lambda: u.get("/v1/query/rank", stream=STREAM, key=key, by="count",
                                                  **{"from": a, "to": b}), repeat)
            except RuntimeError as exc:  # an error answer is a finding, not the end of the run
                failures.append(f"rank {label} #{rr}: {exc}"[:300])
                progress(f"  rank {label:>4} #{rr:<7} FAILED: {str(exc)[:200]}")
                continue
            ok = body["rank"] == rr and math.isclose(body["value"], value, rel_tol=REL)
            if not ok:
                failures.append(f"rank {label} {key}: api rank {body['rank']} value {body['value']} vs raw {rr} {value}")
            rows.append({"range": label, "rank": rr, "key": key, "ms": ms, "first_ms": first, "raw_ms": raw_ms, "identical": ok,
                         "total_keys": body.get("total_keys"), "method": (body["meta"].get("ranking") or {}).get("method")})
            progress(f"  rank {label:>4} #{rr:<7} {ms:7.1f} ms (first {first:.1f})  raw {raw_ms:8.1f} ms  identical={ok}")
    return rows


def series_query(u, raw: Raw, repeat: int, failures: list) -> dict:
    b = floor_to(now_ms(), DAY_MS)
    a = b - 365 * DAY_MS
    ms, first, body = timed(lambda: u.get("/v1/query/series", stream=STREAM, step="1d", agg="count",
                                          **{"from": a, "to": b}), repeat)
    raw_ms, truth = raw.daily(a, b)
    got = {parse_time(p["t"]): p["value"] for p in body["points"] if p["value"]}
    ok = got.keys() == truth.keys() and all(math.isclose(got[t], truth[t], rel_tol=REL) for t in got)
    if not ok:
        failures.append(f"series 1y: {len(got)} points vs raw {len(truth)}")
    progress(f"  series 1y daily {ms:.1f} ms (first {first:.1f})  raw {raw_ms:.1f} ms  identical={ok}")
    return {"ms": ms, "first_ms": first, "raw_ms": raw_ms, "identical": ok, "points": len(body["points"])}


def approx_queries(u, raw: Raw, repeat: int, exact: dict) -> dict:
    out = {}
    end = floor_to(now_ms(), MINUTE_MS)
    for label in ("1y", "2y"):
        a, b = end - dict(FIXED)[label], end
        ms, first, body = timed(lambda: u.get("/v1/query/topk", stream=STREAM, k=100, by="count", mode="approx",
                                              **{"from": a, "to": b}), repeat)
        if exact.get(label) is None:
            exact[label], _, _ = timed(lambda: u.get("/v1/query/topk", stream=STREAM, k=100, by="count",
                                                     **{"from": a, "to": b}), repeat)
        _, truth = raw.topk(a, b, "count")
        items = body["items"]
        true = raw.values(a, b, "count", [i["key"] for i in items])
        bounds = all(i.get("lower_bound", i["value"]) <= true.get(i["key"], 0.0) <= i.get("upper_bound", i["value"])
                     for i in items)
        recall = len({i["key"] for i in items} & {k for k, _ in truth}) / max(1, len(truth))
        meta = body["meta"]
        threshold = (meta.get("approx") or {}).get("threshold")
        if threshold is not None and (meta.get("approx") or {}).get("error_type") == "no_false_negatives":
            # the guarantee itself: no key whose true value beats the stated threshold is left out
            _, above = raw._q(f"SELECT key FROM {raw.src} WHERE ts >= ? AND ts < ? GROUP BY key "
                              f"HAVING count(*) > ?", [a, b, threshold])
            bounds = bounds and {k for (k,) in above} <= {i["key"] for i in items}
        out[label] = {"ms": ms, "first_ms": first, "exact_ms": exact.get(label), "bounds_hold": bounds,
                      "recall": recall, "approx": meta.get("approx"), "exact_flag": meta.get("exact"),
                      "has_bounds": all("lower_bound" in i for i in items)}
        progress(f"  approx {label}: {ms:.1f} ms (first {first:.1f}) vs exact {exact.get(label):.1f} ms; bounds hold "
                 f"{bounds}, recall {recall:.2f}, meta {meta.get('approx')}")
    return out


def report(out: dict, topk: list[dict], ranks: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    detail = Table(title=f"top-100 through HTTP ({out['events']:,} events, {out['keys']:,} keys)")
    for col in ("range", "by", "uncached ms", "cached ms", "raw ms", "x raw", "tiers", "method", "cache hits", "same"):
        detail.add_column(col, justify="right" if "ms" in col or col == "x raw" else "left")
    for r in topk:
        detail.add_row(r["range"], r["by"], f"{r['uncached_ms']:.1f}", f"{r['cached_ms']:.1f}", f"{r['raw_ms']:.0f}",
                       f"{r['raw_ms'] / r['uncached_ms']:.1f}", ",".join(r["tiers"]), str(r["method"]),
                       r["cached_segments"], "yes" if r["identical"] else "NO")
    for r in ranks:
        detail.add_row(f"rank {r['range']}", f"#{r['rank']}", f"{r['ms']:.1f}", "", f"{r['raw_ms']:.0f}",
                       f"{r['raw_ms'] / r['ms']:.1f}", "", str(r["method"]), "", "yes" if r["identical"] else "NO")
    console.print(detail)
    goals = Table(title=f"issue 10 goals (issue 14: approx) — load average {out['loadavg']['loadavg_queries'][0]}")
    for col in ("measurement", "measured", "goal", "result"):
        goals.add_column(col)

    def le(v, x):
        return v is not None and not math.isnan(v) and v <= x

    def ge(v, x):
        return v is not None and not math.isnan(v) and v >= x

    def row(name, value, goal, ok, fmt="{:.1f} ms"):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            goals.add_row(name, "not measured", goal, "-")
            return
        goals.add_row(name, "n/a" if value is None else fmt.format(value), goal,
                      "-" if ok is None else "[green]pass[/]" if ok else "[red]FAIL[/]")

    row("top-100 p50 uncached", out["topk_p50_uncached_ms"], "<= 50 ms", le(out["topk_p50_uncached_ms"], 50))
    row("top-100 p95 uncached", out["topk_p95_uncached_ms"], "<= 150 ms", le(out["topk_p95_uncached_ms"], 150))
    row("top-100 p50 cached", out["topk_p50_cached_ms"], "<= 10 ms", le(out["topk_p50_cached_ms"], 10))
    if out.get("topk_first_max_ms") is not None:  # the outside check's "every query under 100 ms", first asks
        row("top-100 first ask, max", out["topk_first_max_ms"], "< 100 ms", le(out["topk_first_max_ms"], 100))
    row("vs raw scan (median per query)", out["ratio_vs_raw"], ">= 50x", ge(out["ratio_vs_raw"], 50), "{:.1f}x")
    if out.get("ratio_vs_raw_total") is not None:
        row("vs raw scan (total time, info)", out["ratio_vs_raw_total"], "-", None, "{:.1f}x")
    row("identical answers", None if out["identical"] is None else int(out["identical"]), "all", out["identical"],
        "{}")
    row("last 24 h (hot) p50", out["hot_24h_p50_ms"], "<= 10 ms", le(out["hot_24h_p50_ms"], 10))
    row("rank in top 10k p50", out["rank_top10k_p50_ms"], "<= 50 ms", le(out["rank_top10k_p50_ms"], 50))
    row("rank any key max", out["rank_any_max_ms"], "<= 500 ms", le(out["rank_any_max_ms"], 500))
    if out.get("rank_first_max_ms") is not None:
        row("rank, first ask of a range, max", out["rank_first_max_ms"], "<= 500 ms", le(out["rank_first_max_ms"], 500))
    row("series 1 y daily uncached", out["series_1y_ms"], "<= 20 ms", le(out["series_1y_ms"], 20))
    for label in ("1y", "2y"):
        ap, ex = out.get(f"approx_{label}_ms"), out.get(f"exact_{label}_ms")
        row(f"approx top-100 {label} (exact {ex:.1f} ms)", ap, "< exact (issue 14)", le(ap, ex if ex is not None else math.nan))
    held = out["approx_bounds_hold"]
    row(f"approx bounds hold (recall {out['approx_recall_1y']:.2f} / {out['approx_recall_2y']:.2f})",
        None if held is None else int(bool(held)), "every exact value in bounds, none above threshold missing",
        None if held is None else bool(held), "{}")
    console.print(goals)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000_000)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--hot-events", type=int, default=10_000_000)
    ap.add_argument("--ranges", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--parts", default="topk,rank,series,approx", help="which measurements (comma-separated)")
    ap.add_argument("--keep", action="store_true", help="reuse the dataset a previous run built with these parameters")
    ap.add_argument("--data", type=Path, default=None, help="dataset folder (default $TIERSTORE_HOME/bench-query)")
    args = ap.parse_args(argv)
    from tierstore.settings import load_settings
    from tierstore.wiring import open_resources

    base = load_settings()
    data_dir = (args.data or base.home / "bench-query").resolve()
    params = Params(args.events, args.keys, min(args.hot_events, args.events))
    manifest = load_manifest(data_dir, params) if args.keep else None
    settings = support.isolated(base, REDIS_DB, DATABASE, reset=manifest is None, cold_dir=data_dir / "cold")
    if manifest is None and (data_dir / "cold").exists():
        import shutil
        shutil.rmtree(data_dir / "cold")
    data_dir.mkdir(parents=True, exist_ok=True)
    port = base.port_base + 14
    load = {"loadavg_start": os.getloadavg()}
    with support.Served(support.settings_env(settings, results_cache_entries=0, results_cache_ttl=0), port) as u:
        if manifest is None:
            progress(f"building {params.events:,} events ({params.hot_events:,} hot), {params.keys:,} keys in {data_dir}")
            with open_resources(settings) as res:
                manifest = build(res, settings, params, data_dir, u.run_job, log=progress)
            save_manifest(data_dir, params, manifest)
            progress(f"built in {manifest['timings']['total_s']:.0f} s: {json.dumps(manifest['timings'])}")
        else:
            progress(f"reusing the dataset in {data_dir} (built {manifest['timings']['total_s']:.0f} s)")
        with support.Served(support.settings_env(settings), port + 1) as c:
            raw = Raw(data_dir / "raw")
            failures: list[str] = []
            end = floor_to(now_ms(), MINUTE_MS)
            ranges = [(label, span, None, None) for label, span in FIXED]
            ranges += [(label, None, a, b) for label, a, b in arbitrary_ranges(args.ranges, manifest["start"], end)]
            load["loadavg_queries"] = os.getloadavg()
            parts = set(args.parts.split(","))
            topk = topk_queries(u, c, raw, ranges, args.repeat, failures) if "topk" in parts else []
            ranks = rank_queries(u, raw, args.repeat, failures) if "rank" in parts else []
            series = series_query(u, raw, args.repeat, failures) if "series" in parts else {"ms": math.nan}
            exact = {label: statistics.median([r["uncached_ms"] for r in topk if r["range"] == label and r["by"] == "count"])
                     if topk else None for label in ("1y", "2y")}
            nan = {"ms": math.nan, "first_ms": math.nan, "bounds_hold": None, "has_bounds": None, "recall": math.nan,
                   "approx": None}
            try:
                approx = approx_queries(u, raw, args.repeat, exact) if "approx" in parts else {"1y": nan, "2y": nan}
            except RuntimeError as exc:  # an error answer is a finding, not the end of the run
                failures.append(f"approx: {exc}"[:300])
                approx = {"1y": nan, "2y": nan}
    load["loadavg_end"] = os.getloadavg()
    nan = [math.nan]
    unc = [r["uncached_ms"] for r in topk] or nan
    top10k = [r["ms"] for r in ranks if r["rank"] <= 10_000]
    out = {"events": params.events, "keys": params.keys, "hot_events": params.hot_events,
           "topk_queries": len(topk), "repeat": args.repeat,
           "topk_p50_uncached_ms": round(statistics.median(unc), 1), "topk_p95_uncached_ms": round(pct(unc, 0.95), 1),
           "topk_max_uncached_ms": round(max(unc), 1),
           # the first ask of each top-K (the uncached server's in-process caches still cold for it)
           "topk_first_p50_ms": round(statistics.median([r["uncached_first_ms"] for r in topk] or nan), 1),
           "topk_first_max_ms": round(max([r["uncached_first_ms"] for r in topk] or nan), 1),
           "topk_p50_cached_ms": round(statistics.median([r["cached_ms"] for r in topk] or nan), 1),
           "topk_p95_cached_ms": round(pct([r["cached_ms"] for r in topk] or nan, 0.95), 1),
           "hot_24h_p50_ms": round(statistics.median([r["uncached_ms"] for r in topk if r["range"] == "24h"] or nan), 1),
           "rank_top10k_p50_ms": round(statistics.median(top10k), 1) if top10k else None,
           "rank_any_max_ms": round(max(r["ms"] for r in ranks), 1) if ranks else None,
           # the first ask of each (range, key): the piece caches of a fresh range still empty
           "rank_first_max_ms": round(max(r["first_ms"] for r in ranks), 1) if ranks else None,
           "series_1y_ms": round(series["ms"], 1),
           "ratio_vs_raw": round(statistics.median([r["raw_ms"] / r["uncached_ms"] for r in topk] or nan), 1),
           "ratio_vs_raw_min": round(min([r["raw_ms"] / r["uncached_ms"] for r in topk] or nan), 1),
           # the whole query set: the raw scan's total time over ours (long ranges weigh as they cost)
           "ratio_vs_raw_total": round(sum(r["raw_ms"] for r in topk) / sum(r["uncached_ms"] for r in topk), 1)
           if topk else None,
           "raw_p50_ms": round(statistics.median([r["raw_ms"] for r in topk] or nan), 1),
           "identical": not failures, "failures": failures[:10],
           "approx_1y_ms": round(approx["1y"]["ms"], 1), "exact_1y_ms": round(exact["1y"] or math.nan, 1),
           "approx_2y_ms": round(approx["2y"]["ms"], 1), "exact_2y_ms": round(exact["2y"] or math.nan, 1),
           "approx_1y_first_ms": round(approx["1y"]["first_ms"], 1), "approx_2y_first_ms": round(approx["2y"]["first_ms"], 1),
           "parts": sorted(parts),
           "approx_bounds_hold": approx["1y"]["bounds_hold"] and approx["2y"]["bounds_hold"],
           "approx_has_bounds": approx["1y"]["has_bounds"] and approx["2y"]["has_bounds"],
           "approx_recall_1y": approx["1y"]["recall"], "approx_recall_2y": approx["2y"]["recall"],
           "approx_bounds_ok": approx["1y"]["bounds_hold"] and approx["2y"]["bounds_hold"],
           "approx_recall": min(approx["1y"]["recall"], approx["2y"]["recall"]),
           "approx_faster": bool(approx["1y"]["ms"] < (exact["1y"] or math.nan)
                                 and approx["2y"]["ms"] < (exact["2y"] or math.nan)),
           "approx_meta": approx["2y"]["approx"],
           "methods": {f"{r['range']}/{r['by']}": r["method"] for r in topk if span_label(r["range"])},
           "build_s": manifest["timings"]["total_s"], "build": manifest["timings"],
           "loadavg": {k: [round(x, 2) for x in v] for k, v in load.items()}}
    report(out, topk, ranks)
    for f in failures:
        progress(f"DIFFERS: {f}")
    print(json.dumps(out))
    return 0 if not failures else 1


def span_label(label: str) -> bool:
    return not label.startswith("r")


if __name__ == "__main__":
    sys.exit(main())
