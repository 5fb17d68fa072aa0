"""GET /v1/tiers and GET /v1/streams count exactly (issue 13, part 3): after the jobs spread events
over all four tiers, each tier's rows equal the raw events in the range the catalog gives it (the
oracle), per tier and per stream, and every tier reports its bytes."""
from __future__ import annotations

import os
import random
import shutil
import uuid

import pytest

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, floor_to, now_ms, parse_time
from tests.api_support import isolated_settings, run_job, served, unique_stream

HOT_AGE, WARM_AGE, COLD_AGE = DAY_MS, 2 * DAY_MS, 3 * DAY_MS


@pytest.fixture(scope="module")
def sizes_settings(settings):
    cold_dir = settings.cold_dir / f"_test_tier_sizes_{uuid.uuid4().hex[:8]}"
    s = isolated_settings(settings, "tier_sizes", redis_db=49).model_copy(update={
        "hot_age": HOT_AGE, "warm_age": WARM_AGE, "cold_age": COLD_AGE, "grace_period": 0, "cold_dir": cold_dir})
    yield s
    shutil.rmtree(cold_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def api(sizes_settings):
    yield from served(sizes_settings)


@pytest.fixture(scope="module")
def loaded(api):
    """Two streams over the last 5.5 days, moved down by flush, refresh, export_cold, archive and
    expire_hot, so archive, cold, warm and hot each own some of them."""
    rnd, now = random.Random(13), now_ms()
    streams = {unique_stream("sz"): 1500, unique_stream("sy"): 400}
    events: dict[str, list[int]] = {}
    for stream, n in streams.items():
        batch = [{"stream": stream, "key": f"k{rnd.randint(0, 30)}", "value": rnd.randint(-3, 9),
                  "ts": rnd.randrange(now - 5 * DAY_MS - 12 * HOUR_MS, now - 5 * MINUTE_MS)} for _ in range(n)]
        r = api.post("/v1/events", json=batch)
        assert r.status_code == 202, r.text
        events[stream] = [e["ts"] for e in batch]
    for job, as_of in (("flush", None), ("refresh", None), ("export_cold", None), ("archive", None),
                       ("expire_hot", now + 2 * HOUR_MS), ("flush", None), ("refresh", None)):
        run = run_job(api, job, as_of=as_of, timeout_s=600)
        assert run["status"] == "done", run
    return events


def owned_counts(tiers_body: dict, ts: list[int]) -> dict[str, int]:
    out = {}
    for t in tiers_body["tiers"]:
        lo, hi = parse_time(t["owns"]["from"]), parse_time(t["owns"]["to"])
        out[t["name"]] = sum(1 for x in ts if lo <= x < hi)
    return out


def test_tiers_rows_are_exact_and_bytes_known(api, loaded, sizes_settings):
    body = api.get("/v1/tiers").json()
    want = owned_counts(body, [x for ts in loaded.values() for x in ts])
    assert all(want[n] > 0 for n in ("archive", "cold", "warm", "hot")), want  # the world spans every tier
    got = {t["name"]: t["rows"] for t in body["tiers"]}
    assert got == want, (got, want, body["boundaries"])
    assert all(t["bytes"] and t["bytes"] > 0 for t in body["tiers"]), body["tiers"]
    on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(sizes_settings.cold_dir)
                  for f in files if "/_" not in d[len(str(sizes_settings.cold_dir)):])
    assert next(t["bytes"] for t in body["tiers"] if t["name"] == "cold") == on_disk


def test_stream_sizes_are_exact_per_tier(api, loaded):
    tiers_body = api.get("/v1/tiers").json()
    listed = {s["stream"]: s for s in api.get("/v1/streams").json()}
    for stream, ts in loaded.items():
        want = owned_counts(tiers_body, ts)
        one = api.get(f"/v1/streams/{stream}").json()
        for info in (one, listed[stream]):
            assert {t["name"]: t["rows"] for t in info["tiers"]} == want, (stream, info["tiers"], want)
            assert info["events"] == len(ts) and info["registered"] is False
            sized = {t["name"]: t["bytes"] for t in info["tiers"]}
            assert sized["cold"] > 0 and sized["archive"] > 0 and sized["warm"] is None and sized["hot"] is None


def test_a_query_of_every_tier_equals_the_counts(api, loaded):
    """The rows /v1/streams reports are the events a query answers over all time."""
    stream, ts = next(iter(loaded.items()))
    now = now_ms()
    body = api.get("/v1/query/series", {"stream": stream, "from": floor_to(now - 6 * DAY_MS, DAY_MS),
                                        "to": now, "step": "1d", "agg": "count"}).json()
    assert sum(p["value"] or 0 for p in body["points"]) == len(ts)
    assert {s["tier"] for s in body["meta"]["segments"]} == {"archive", "cold", "warm", "hot"}
