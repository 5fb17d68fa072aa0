"""Calendar steps, local days and local times (rollups/calendar.py) and the per-bucket cover
(rollups/cover.py cover_buckets), against an independent reading of the calendar with zoneinfo."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from rollups.calendar import (bucket_bounds, bucket_count, parse_query_time, parse_step, time_zone)
from rollups.cover import cover_buckets
from rollups.errors import BadRequest
from rollups.timeutil import G1D, G1H, G1M, G1MO, G1W, HOUR_MS, MINUTE_MS, RAW, TimeRange, parse_time

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Eucla",
         "Pacific/Chatham", "Australia/Lord_Howe", "America/St_Johns"]


def ms(text: str) -> int:
    return parse_time(text)


def local_midnight(d: date, zone: str) -> int:
    """The reference: the first instant whose local date is d, found by scanning minutes."""
    z = ZoneInfo(zone)
    guess = datetime(d.year, d.month, d.day, tzinfo=timezone.utc) - timedelta(hours=15)
    t = int(guess.timestamp()) * 1000
    while datetime.fromtimestamp(t / 1000, z).date() < d:
        t += 15 * MINUTE_MS
    while datetime.fromtimestamp((t - MINUTE_MS) / 1000, z).date() >= d:
        t -= MINUTE_MS
    return t


@pytest.mark.parametrize("zone,day,hours", [
    ("Europe/Berlin", "2026-03-29", 23), ("Europe/Berlin", "2026-10-25", 25), ("Europe/Berlin", "2026-03-28", 24),
    ("America/New_York", "2026-03-08", 23), ("America/New_York", "2026-11-01", 25),
    ("Asia/Kolkata", "2026-03-29", 24), ("Asia/Kathmandu", "2026-10-25", 24), ("Australia/Lord_Howe", "2026-04-05", 24.5),
])
def test_local_days_last_23_24_or_25_hours(zone, day, hours):
    d = date.fromisoformat(day)
    step = parse_step("1d", time_zone(zone))
    start = local_midnight(d, zone)
    bounds = bucket_bounds(start, start + 1, step, time_zone(zone))
    assert bounds == [start, local_midnight(d + timedelta(days=1), zone)]
    assert bounds[1] - bounds[0] == hours * HOUR_MS


def test_kolkata_and_kathmandu_days_start_at_half_and_quarter_hours():
    assert bucket_bounds(ms("2026-03-29T12:00:00Z"), ms("2026-03-29T12:01:00Z"), parse_step("1d", time_zone("Asia/Kolkata")),
                         time_zone("Asia/Kolkata")) == [ms("2026-03-28T18:30:00Z"), ms("2026-03-29T18:30:00Z")]
    assert bucket_bounds(ms("2026-03-29T12:00:00Z"), ms("2026-03-29T12:01:00Z"), parse_step("1d", time_zone("Asia/Kathmandu")),
                         time_zone("Asia/Kathmandu")) == [ms("2026-03-28T18:15:00Z"), ms("2026-03-29T18:15:00Z")]
    eucla = time_zone("Australia/Eucla")  # +08:45
    assert bucket_bounds(ms("2026-03-29T12:00:00Z"), ms("2026-03-29T12:01:00Z"), parse_step("1d", eucla),
                         eucla) == [ms("2026-03-28T15:15:00Z"), ms("2026-03-29T15:15:00Z")]


def test_weeks_start_monday_months_quarters_years():
    b = bucket_bounds(ms("2026-11-05T00:00:00Z"), ms("2026-11-19T00:00:00Z"), parse_step("1w", None), None)
    assert b == [ms("2026-11-02T00:00:00Z"), ms("2026-11-09T00:00:00Z"), ms("2026-11-16T00:00:00Z"),
                 ms("2026-11-23T00:00:00Z")]
    assert all(datetime.fromtimestamp(t / 1000, timezone.utc).weekday() == 0 for t in b)
    berlin = time_zone("Europe/Berlin")
    assert bucket_bounds(ms("2026-02-10T00:00:00Z"), ms("2026-04-01T00:00:00Z"), parse_step("1mo", berlin), berlin) == [
        ms("2026-01-31T23:00:00Z"), ms("2026-02-28T23:00:00Z"), ms("2026-03-31T22:00:00Z"), ms("2026-04-30T22:00:00Z")]
    assert bucket_bounds(ms("2026-05-10T00:00:00Z"), ms("2026-08-01T00:00:00Z"), parse_step("1q", None), None) == [
        ms("2026-04-01T00:00:00Z"), ms("2026-07-01T00:00:00Z"), ms("2026-10-01T00:00:00Z")]
    ny = time_zone("America/New_York")
    assert bucket_bounds(ms("2026-01-01T02:00:00Z"), ms("2026-01-01T06:00:00Z"), parse_step("1y", ny), ny) == [
        ms("2025-01-01T05:00:00Z"), ms("2026-01-01T05:00:00Z"), ms("2027-01-01T05:00:00Z")]
    assert bucket_count(ms("2016-01-01T00:00:00Z"), ms("2026-01-01T00:00:00Z"), parse_step("1mo", None), None) == 120


def test_2w_counts_weeks_from_a_monday_and_nd_in_utc_stays_fixed():
    b = bucket_bounds(ms("2026-11-05T00:00:00Z"), ms("2026-11-06T00:00:00Z"), parse_step("2w", None), None)
    assert datetime.fromtimestamp(b[0] / 1000, timezone.utc).weekday() == 0 and b[1] - b[0] == 14 * 24 * HOUR_MS
    assert not parse_step("1d", None).calendar and parse_step("1d", time_zone("UTC")).ms == 24 * HOUR_MS
    assert parse_step("3d", time_zone("Asia/Kolkata")).calendar


@pytest.mark.parametrize("bad", ["0d", "2mo", "1x", "5s", "", "1M"])
def test_bad_steps(bad):
    with pytest.raises(BadRequest):
        parse_step(bad, None)


@pytest.mark.parametrize("bad", ["Mars/Base", "America", "../etc/passwd", "utc", "Europe/Berlin\n"])
def test_unknown_zones(bad):
    with pytest.raises(BadRequest) as err:
        time_zone(bad)
    assert err.value.code == "unknown_time_zone"


def test_local_times_read_in_the_zone_absolute_times_not():
    berlin = time_zone("Europe/Berlin")
    assert parse_query_time("2026-03-29", berlin, 0, field="from") == ms("2026-03-28T23:00:00Z")
    assert parse_query_time("2026-03-30", berlin, 0, field="to") == ms("2026-03-29T22:00:00Z")
    assert parse_query_time("2026-10-25T02:30", berlin, 0, field="from") == ms("2026-10-25T00:30:00Z")  # first
    assert parse_query_time("2026-03-29T02:30:00", berlin, 0, field="from") == ms("2026-03-29T01:30:00Z")  # gap
    assert parse_query_time("2026-03-29", None, 0, field="from") == ms("2026-03-29T00:00:00Z")
    assert parse_query_time("2026-03-29T10:00:00+05:00", berlin, 0, field="from") == ms("2026-03-29T05:00:00Z")
    assert parse_query_time(1_000, berlin, 0, field="from") == 1_000
    assert parse_query_time("now-1h", berlin, 10 * HOUR_MS, field="from") == 9 * HOUR_MS
    with pytest.raises(BadRequest):
        parse_query_time("2026-02-30", berlin, 0, field="from")


@given(zone=st.sampled_from(ZONES), step=st.sampled_from(["1d", "2d", "1w", "1mo", "1q", "1y"]),
       start=st.integers(ms("2020-01-01T00:00:00Z") // MINUTE_MS, ms("2030-01-01T00:00:00Z") // MINUTE_MS),
       minutes=st.integers(1, 800 * 24 * 60))
@hsettings(max_examples=150, deadline=None)
def test_bounds_are_local_midnights_of_period_starts(zone, step, start, minutes):
    z = ZoneInfo(zone)
    s = parse_step(step, z)
    assume(s.calendar)  # 1d and 2d in UTC are fixed, epoch-aligned steps
    lo, hi = start * MINUTE_MS, (start + minutes) * MINUTE_MS
    bounds = bucket_bounds(lo, hi, s, z)
    assert bounds[0] <= lo < bounds[1] and bounds[-2] < hi <= bounds[-1]
    assert len(bounds) - 1 == bucket_count(lo, hi, s, z)
    for t in bounds:
        d = datetime.fromtimestamp(t / 1000, z).date()
        assert t == local_midnight(d, zone)
        if step == "1w":
            assert d.weekday() == 0
        elif step in ("1mo", "1q", "1y"):
            assert d.day == 1 and (step != "1q" or d.month in (1, 4, 7, 10)) and (step != "1y" or d.month == 1)


@given(zone=st.sampled_from(ZONES), step=st.sampled_from(["1d", "1w", "1mo"]),
       start=st.integers(ms("2025-01-01T00:00:00Z") // MINUTE_MS, ms("2027-01-01T00:00:00Z") // MINUTE_MS),
       minutes=st.integers(1, 90 * 24 * 60), grans=st.sampled_from([(G1M, G1H, G1D), (RAW, G1H, G1D, G1W, G1MO)]))
@hsettings(max_examples=150, deadline=None)
def test_cover_buckets_tiles_the_range_and_nests_in_buckets(zone, step, start, minutes, grans):
    z = ZoneInfo(zone)
    rng = TimeRange(start * MINUTE_MS, (start + minutes) * MINUTE_MS)
    assume(parse_step(step, z).calendar)
    bounds = bucket_bounds(rng.start, rng.end, parse_step(step, z), z)
    pieces = cover_buckets(rng, bounds, grans)
    assert pieces[0].range.start == rng.start and pieces[-1].range.end == rng.end
    assert all(a.range.end == b.range.start for a, b in zip(pieces, pieces[1:]))
    for p in pieces:
        g = p.granularity
        if g.is_raw:
            continue
        t = p.range.start
        while t < p.range.end:  # every rollup bucket read lies inside one series bucket
            n = g.next(t)
            inside = [b for b in bounds if t < b < n]
            assert not inside, (p, inside)
            t = n
