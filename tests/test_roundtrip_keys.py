"""Every key and id the ingest edge accepts round-trips byte-exact through every tier (issue 8,
part 4): hot (topk, rank, series and the score endpoint over HTTP), warm, cold (DuckDB and Trino
engines), the S3 archive, and the three report formats.

The keys and ids are drawn by hypothesis from everything the edge accepts (any Unicode text
without U+0000 and without lone surrogates, 1..256 UTF-8 bytes: 4-byte characters, combining
marks, right-to-left text, whitespace only, URL, SQL and LIKE metacharacters, quotes, backslashes,
line breaks...) plus a list of known troublemakers. One pipeline run per engine is expensive (the
catalog's boundaries only move forward), so hypothesis draws one derandomized batch (a fixed,
reproducible sample) and the whole batch goes through the pipeline once: each key has one event
in the range each tier will own, then flush, refresh, expire_hot, export_cold and archive run
through the API with as_of, and each tier is read over its own range.
"""
from __future__ import annotations

import csv
import io
import json
import time
from urllib.parse import quote

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError

from rollups.errors import ValidationFailed
from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, floor_to, format_time, now_ms
from router.models import MAX_ID_BYTES, MAX_KEY_BYTES, Event, text_problem
from tests.api_support import ApiServer, isolated_settings, run_job, served, unique_stream
from tests.warm_support import require_mode

N_KEYS = 200
IDS_PER_KEY = 4  # one event per tier window, each with its own id

SPECIAL_CHARS = list("%_/\\'\"`;,\n\r\t *?#&=+:|[]{}$@!<>~^().-") + [
    "\u00a0", "\u200b", "\u200d", "\u202e", "\u2028", "\u0301", "\u0308", "é", "ß", "İ", "🎵", "𝄞",
    "\U0010ffff", "\ufeff", "\uffff", "\ufffd", "\x01", "\x1f", "\x7f", "\x85", "ש", "ع", "中", "\U0001f468"]
NASTY = [
    " ", "   ", "\t", " lead", "trail ", "%", "%%", "_", "%_%", "a%", "_a", "'", "''", '"', '""', "\\", "\\\\",
    "a/b", "/", "//", "a//b", "/a/", ".", "..", "../x", "./", "' OR '1'='1", "'; DROP TABLE events; --",
    "\\x00", "\\u0000", "%00", "%2F", "null", "NULL", "None", "NaN", "nan", "true", "0", "-0", "1e5", "=1+1",
    "@SUM(1)", "+1", "-1", "a,b", "a\nb", "a\r\nb", "\r", "\n", "e\u0301", "\u202eabc", "שלום", "مرحبا", "日本語",
    "🎵" * 64, "x" * 256, "é" * 128, "a" + "é" * 127, "\ufeffbom", "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "*", "?", "#frag", "a?b=c", "a&b", "$1", ":name", "{}", "[]", "<script>", "a\\nb", "\u00a0", "\u3000",
    "\U0010ffff", "\uffff",
]

# everything the edge accepts: any code point but NUL and the surrogates
_char = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def _fit(text: str, limit: int) -> str:
    """The longest prefix of `text` of at most `limit` UTF-8 bytes."""
    return text.encode()[:limit].decode("utf-8", "ignore")


def accepted_text(limit: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(_char, min_size=1, max_size=12),
        st.text(_char, min_size=limit // 4, max_size=limit + 40).map(lambda s: _fit(s, limit)),  # long ones
        st.text(st.sampled_from(SPECIAL_CHARS), min_size=1, max_size=24).map(lambda s: _fit(s, limit)),
        st.sampled_from(NASTY).map(lambda s: _fit(s, limit)),
    ).filter(lambda s: text_problem(s, limit) is None)


def draw(strategy: st.SearchStrategy[str], n: int) -> list[str]:
    """n distinct values drawn by hypothesis, the same on every run (derandomized). Drawn as lists:
    one value per example would cost ~7 ms each in hypothesis's own bookkeeping."""
    out: dict[str, None] = {}

    @given(st.lists(strategy, min_size=10, max_size=30, unique=True))
    @hsettings(max_examples=n // 4 + 20, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
               suppress_health_check=list(HealthCheck))
    def collect(values):
        for value in values:
            if len(out) < n:
                out[value] = None

    collect()
    assert len(out) == n, f"hypothesis drew only {len(out)} distinct values"
    return list(out)


@pytest.fixture(scope="module")
def sample() -> dict:
    """N_KEYS keys (the NASTY list first) and IDS_PER_KEY distinct ids for each."""
    keys = list(dict.fromkeys(_fit(k, MAX_KEY_BYTES) for k in NASTY))
    keys += [k for k in draw(accepted_text(MAX_KEY_BYTES), N_KEYS) if k not in set(keys)][:N_KEYS - len(keys)]
    ids = draw(accepted_text(MAX_ID_BYTES), IDS_PER_KEY * N_KEYS)
    return {"keys": keys, "ids": [ids[i * IDS_PER_KEY:(i + 1) * IDS_PER_KEY] for i in range(len(keys))]}


def test_the_sample_is_what_the_edge_accepts(sample):
    for text in sample["keys"] + [i for ids in sample["ids"] for i in ids]:
        assert text_problem(text, MAX_KEY_BYTES) is None, repr(text)
    assert len(set(sample["keys"])) == N_KEYS
    assert any(len(k.encode()) == MAX_KEY_BYTES for k in sample["keys"])
    assert any(any(ord(c) > 0xFFFF for c in k) for k in sample["keys"])


# ---- the edge's one rule, everywhere: the Event model, the vectorised pass, the per-event loop ----

_any_text = st.one_of(st.text(max_size=8), st.text(st.sampled_from(["\x00", "\ud800", "\udfff", "a", "é", "🎵"]),
                                                   max_size=70), accepted_text(MAX_KEY_BYTES))


@given(key=_any_text, id_=st.none() | _any_text)
@hsettings(max_examples=300, deadline=None)
def test_the_model_and_both_ingest_paths_accept_the_same_keys_and_ids(key, id_):
    from router.ingest import _checked_table, _valid_table

    event = {"stream": "s", "key": key, "ts": 0, "value": 1.0, "id": id_}
    try:
        Event.model_validate(event, strict=True)
        model_ok = True
    except ValidationError:
        model_ok = False
    rule_ok = text_problem(key, MAX_KEY_BYTES) is None and (id_ is None or text_problem(id_, MAX_ID_BYTES) is None)
    try:
        _checked_table([event], 0)
        loop_ok = True
    except ValidationFailed:
        loop_ok = False
    fast_ok = _valid_table([event], 0) is not None
    assert model_ok == rule_ok == loop_ok == fast_ok, (key, id_, model_ok, rule_ok, loop_ok, fast_ok)


# ---- the round trip ------------------------------------------------------------------------------

# short tier ages: export_cold walks every day from the oldest warm event, and on Trino each day
# costs a partition sync (~0.2 s); with the default ages (cold 365 d) that alone took 77 s
AGES = {"hot_age": HOUR_MS, "warm_age": DAY_MS, "cold_age": 4 * DAY_MS}


# (cold engine, warm mode, the Redis database this module owns for it)
ENGINES = [pytest.param(("duckdb", "postgres", 40), id="duckdb-postgres"),
           pytest.param(("duckdb", "timescale", 41), id="duckdb-timescale", marks=pytest.mark.timescale),
           pytest.param(("trino", "postgres", 42), id="trino-postgres", marks=pytest.mark.trino)]


@pytest.fixture(scope="module", params=ENGINES)
def api(request, settings):
    engine, mode, redis_db = request.param
    require_mode(settings.postgres_url, mode)
    if engine == "trino":
        import requests

        try:
            requests.get(settings.trino_url + "/v1/info", timeout=3).raise_for_status()
        except requests.RequestException:
            pytest.skip("Trino is not running (tierstore services up starts it)")
    isolated = isolated_settings(settings, f"roundtrip_{engine}_{mode}", redis_db=redis_db).model_copy(
        update={"cold_engine": engine, "warm_mode": mode, "allow_clock_override": True, **AGES})
    yield from served(isolated)


def _value(i: int) -> float:
    return 1.0 + (i % 7) * 0.25


def _expected_order(keys: list[str]) -> list[tuple[str, float]]:
    """API.md's ordering: value descending, then key ascending by UTF-8 bytes (= by code point)."""
    return sorted(((k, _value(i)) for i, k in enumerate(keys)), key=lambda kv: (-kv[1], kv[0]))


def _topk(api: ApiServer, stream: str, start: int) -> tuple[list[tuple[str, float]], set[str]]:
    r = api.get("/v1/query/topk", {"stream": stream, "from": start, "to": start + 2 * MINUTE_MS, "k": 10_000,
                                   "by": "sum"})
    assert r.status_code == 200, r.text
    body = r.json()
    return [(i["key"], i["value"]) for i in body["items"]], {s["tier"] for s in body["meta"]["segments"]}


def _mismatch(got: list, want: list) -> str:
    missing = [w for w in want if w not in got]
    extra = [g for g in got if g not in want]
    return f"missing {missing[:5]!r} extra {extra[:5]!r} ({len(got)} got, {len(want)} wanted)"


def _check_tier(api: ApiServer, stream: str, start: int, tier: str, keys: list[str], rank_every: int) -> None:
    want = _expected_order(keys)
    got, tiers = _topk(api, stream, start)
    assert tiers == {tier}, f"the range at {format_time(start)} was read from {tiers}, not {tier}"
    assert got == want, f"{tier}: topk differs: {_mismatch(got, want)}"
    positions = {k: n for n, (k, _) in enumerate(want)}
    for i, key in enumerate(keys[::rank_every]):
        params = {"stream": stream, "from": start, "to": start + 2 * MINUTE_MS, "by": "sum", "key": key, "around": 1}
        body = api.get("/v1/query/rank", params).json()
        n = positions[key]
        assert (body["key"], body["rank"], body["value"]) == (key, n + 1, want[n][1]), (tier, key, body)
        assert [a["key"] for a in body["around"]] == [k for k, _ in want[max(0, n - 1):n + 2]], (tier, key)
        if i % 4 == 0:
            series = api.get("/v1/query/series", {"stream": stream, "from": start, "to": start + 2 * MINUTE_MS,
                                                  "key": key, "step": "1m", "agg": "count"}).json()
            assert series["key"] == key and sum(p["value"] or 0 for p in series["points"]) == 1, (tier, key, series)


def _events(stream: str, sample: dict, windows: dict[str, int]) -> list[dict]:
    out = []
    for i, (key, ids) in enumerate(zip(sample["keys"], sample["ids"])):
        for (tier, start), id_ in zip(windows.items(), ids):
            out.append({"stream": stream, "key": key, "ts": start + (i % 60) * 1000, "value": _value(i), "id": id_})
    return out


def _report(api: ApiServer, stream: str, lo: int, hi: int, kind: str, fmt: str) -> list[dict]:
    r = api.post("/v1/reports", json={"stream": stream, "from": lo, "to": hi, "kind": kind, "format": fmt})
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    deadline = time.monotonic() + 120
    while (st_ := api.get(f"/v1/reports/{rid}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, st_
        time.sleep(0.1)
    assert st_["status"] == "done", st_
    data = api.get(f"/v1/reports/{rid}/download").content
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    if fmt == "parquet":
        return pq.read_table(io.BytesIO(data)).to_pylist()
    return json.loads(data)["rows"]


def test_keys_and_ids_round_trip_byte_exact_through_every_tier_and_report(api, sample):
    keys, stream = sample["keys"], unique_stream("rt")
    now = now_ms()
    windows = {"archive": now - 6 * DAY_MS, "cold": now - 2 * DAY_MS, "warm": now - 10 * HOUR_MS,
               "hot": now - 20 * MINUTE_MS}
    windows = {t: floor_to(w, MINUTE_MS) for t, w in windows.items()}
    events = _events(stream, sample, windows)
    r = api.post("/v1/events", json=events)
    assert r.status_code == 202 and r.json() == {"accepted": len(events), "duplicates": 0}, r.text
    again = api.post("/v1/events", json=events)  # every id is known again, byte for byte, to the dedup set
    assert again.json() == {"accepted": 0, "duplicates": len(events)}, again.text

    score_stream, refused = unique_stream("rtscore"), []
    for i, key in enumerate(keys):
        path = f"/v1/streams/{score_stream}/keys/{quote(key, safe='').replace('.', '%2E')}/score"
        r = api.post(path, json={"delta": _value(i)})
        if r.status_code != 200 or (r.json()["key"], r.json()["score"]) != (key, _value(i)):
            refused.append((key, r.status_code, r.text[:200]))
    assert not refused, f"the score endpoint refused or changed {len(refused)} keys: {refused[:5]}"

    as_of = format_time(now)
    for job in ("flush", "refresh", "expire_hot", "export_cold", "archive"):
        run = run_job(api, job, as_of=as_of, timeout_s=300)
        assert run["status"] == "done", run

    for tier, start in windows.items():  # rank every key in hot, every fifth elsewhere
        _check_tier(api, stream, start, tier, keys, rank_every=1 if tier == "hot" else 5)

    sent_events = sorted((e["key"], e["id"]) for e in events)
    lo, hi = windows["archive"], now
    for fmt in ("csv", "parquet", "json"):
        rows = _report(api, stream, lo, hi, "events", fmt)
        got = sorted((row["key"], row["id"]) for row in rows)
        assert got == sent_events, f"{fmt} events report: {_mismatch(got, sent_events)}"
        totals = _report(api, stream, lo, hi, "totals", fmt)
        got_keys = sorted(row["key"] for row in totals)
        assert got_keys == sorted(keys), f"{fmt} totals report: {_mismatch(got_keys, sorted(keys))}"
        assert all(int(row["count"]) == len(windows) for row in totals), fmt
