"""Calendar steps (ISO weeks, months, quarters, years), local days in an IANA zone, and local times.

A series step is either fixed (`Nm`, `Nh`, and `Nd` in UTC: epoch-aligned, every bucket `ms`
wide) or calendar: `Nw` (ISO weeks, Monday 00:00; N weeks counted from Monday 1970-01-05),
`1mo`, `1q`, `1y`, and `Nd` in a zone other than UTC (N local days counted from 1970-01-01).
Calendar buckets start at local midnight of the zone (UTC when none is given), so a local day
lasts 23 h or 25 h across a DST change; their starts are still instants (epoch ms, UTC).

Times given as a date (`2026-03-29`) or a local date-time without offset (`2026-03-29T12:00`)
are read in the zone; RFC 3339 with an offset, epoch ms and `now-…` are absolute. A local time
that occurs twice (autumn) is its first occurrence; one that does not exist (in the spring gap)
is read with the offset before the gap (02:30 -> 03:30 summer time), as is a missing midnight.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rollups.errors import BadRequest
from rollups.timeutil import DAY_MS, MINUTE_MS, floor_to, from_datetime, parse_time, to_datetime

_STEP = re.compile(r"^([0-9]{1,9})(s|m|h|d|w|mo|q|y)$", re.ASCII)
_FIXED_MS = {"s": 1000, "m": MINUTE_MS, "h": 60 * MINUTE_MS, "d": DAY_MS}
_MONTHS = {"mo": 1, "q": 3, "y": 12}
_DATE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})$", re.ASCII)
_LOCAL = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.][0-9]{1,9})?)?$", re.ASCII)
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_EPOCH_MONDAY = date(1970, 1, 5).toordinal()
# calendar buckets are computed on dates: keep a year of margin inside datetime's years 1..9999
_FIRST_MS = from_datetime(datetime(2, 1, 1, tzinfo=timezone.utc))
_LAST_MS = from_datetime(datetime(9998, 12, 31, tzinfo=timezone.utc))
UTC = timezone.utc

STEP_PATTERN = r"^([0-9]{1,9}[smhdw]|1mo|1q|1y)$"
ZONE_PATTERN = r"^[A-Za-z0-9_+./-]{1,64}$"


def time_zone(name: str, *, field: str = "tz") -> tzinfo:
    """The IANA zone `name` (`Europe/Berlin`, `UTC`). Raises BadRequest naming `field` if unknown."""
    try:
        if re.fullmatch(ZONE_PATTERN[1:-1], name or "") is None:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BadRequest(f"{field} {name[:64]!r} is not an IANA time zone such as Europe/Berlin or UTC.",
                         [{"field": field, "problem": "unknown time zone"}], code="unknown_time_zone") from None


@dataclass(frozen=True)
class Step:
    """A series step: fixed (`ms` wide, epoch-aligned) or calendar (`unit` d | w | mo, `n` of them)."""

    name: str
    ms: int  # fixed steps: the width; calendar steps: 0
    unit: str = ""
    n: int = 0

    @property
    def calendar(self) -> bool:
        return self.ms == 0


def parse_step(text: str, zone: tzinfo | None) -> Step:
    """`5m`, `1h`, `1d`, `1w`, `1mo`, `1q`, `1y` -> Step. `Nd` is fixed in UTC, local days in a zone.

    Raises BadRequest (field step) for anything else, or a fixed step not a multiple of 1m.
    """
    m = _STEP.match(text.strip()) if isinstance(text, str) else None
    n = int(m.group(1)) if m else 0
    if not m or n == 0 or (m.group(2) in _MONTHS and n != 1):
        raise BadRequest("step must be a duration such as 1m, 5m, 1h, 1d, or a calendar step 1w, 1mo, 1q, 1y.",
                         [{"field": "step", "problem": "not a step"}])
    unit = m.group(2)
    if unit in _MONTHS:
        return Step(text, 0, "mo", _MONTHS[unit])
    if unit == "w":
        return Step(text, 0, "w", n)
    if unit == "d" and zone is not None and not _is_utc(zone):
        return Step(text, 0, "d", n)
    ms = n * _FIXED_MS[unit]
    if ms % MINUTE_MS:
        raise BadRequest(f"step {text} is not a multiple of 1m.", [{"field": "step", "problem": "not a multiple of 1m"}])
    return Step(text, ms)


def _is_utc(zone: tzinfo) -> bool:
    return zone is UTC or getattr(zone, "key", None) in ("UTC", "Etc/UTC", "Etc/UCT", "UCT", "Zulu", "Etc/Zulu",
                                                         "Universal", "Etc/Universal", "Etc/GMT", "GMT")


def local_midnight(d: date, zone: tzinfo | None) -> int:
    """Epoch ms of the first instant of local date `d` (floored to the minute: some historical
    local mean times had offsets with seconds, and every range is minute-aligned)."""
    dt = datetime(d.year, d.month, d.day, tzinfo=zone or UTC)
    return floor_to(from_datetime(dt), MINUTE_MS)


def local_date(ms: int, zone: tzinfo | None) -> date:
    return to_datetime(ms).astimezone(zone or UTC).date()


def _period_start(d: date, step: Step) -> date:
    if step.unit == "d":
        return date.fromordinal(d.toordinal() - (d.toordinal() - _EPOCH_DAY) % step.n)
    if step.unit == "w":
        return date.fromordinal(d.toordinal() - (d.toordinal() - _EPOCH_MONDAY) % (7 * step.n))
    month0 = d.month - 1 - (d.month - 1) % step.n
    return date(d.year, month0 + 1, 1)


def _next_period(d: date, step: Step) -> date:
    if step.unit == "d":
        return date.fromordinal(d.toordinal() + step.n)
    if step.unit == "w":
        return date.fromordinal(d.toordinal() + 7 * step.n)
    months = d.year * 12 + d.month - 1 + step.n
    return date(months // 12, months % 12 + 1, 1)


def _ordinal(d: date, step: Step) -> int:
    """Index of d's period along the calendar (consecutive periods differ by one)."""
    if step.unit == "d":
        return (d.toordinal() - _EPOCH_DAY) // step.n
    if step.unit == "w":
        return (d.toordinal() - _EPOCH_MONDAY) // (7 * step.n)
    return (d.year * 12 + d.month - 1) // step.n


def check_calendar_range(start: int, end: int) -> None:
    """Raises BadRequest (invalid_range) for ranges calendar arithmetic cannot serve (years 2..9998)."""
    if start < _FIRST_MS or end > _LAST_MS:
        raise BadRequest("Calendar steps and time zones serve times between years 2 and 9998.",
                         [{"field": "from", "problem": "out of range"}], code="invalid_range")


def bucket_count(start: int, end: int, step: Step, zone: tzinfo | None) -> int:
    """How many calendar buckets [start, end) touches (without listing them)."""
    check_calendar_range(start, end)
    first = _period_start(local_date(start, zone), step)
    last = _period_start(local_date(end - 1, zone), step)
    return _ordinal(last, step) - _ordinal(first, step) + 1


def bucket_bounds(start: int, end: int, step: Step, zone: tzinfo | None) -> list[int]:
    """Edges b0 <= start < b1 < ... < b_n >= end of the calendar buckets touching [start, end):
    bucket i is [b_i, b_i+1), each b_i local midnight of its period's first day, in epoch ms."""
    check_calendar_range(start, end)
    d = _period_start(local_date(start, zone), step)
    bounds = [local_midnight(d, zone)]
    while bounds[-1] < end:
        d = _next_period(d, step)
        bounds.append(local_midnight(d, zone))
    return bounds


def parse_query_time(value: object, zone: tzinfo | None, now: int, *, field: str) -> int:
    """A query's from/to: a date or an offset-less local date-time is read in `zone` (UTC when
    None); everything else as rollups.timeutil.parse_time (absolute). Returns epoch ms."""
    if isinstance(value, str):
        s = value.strip()
        if _DATE.match(s) or _LOCAL.match(s):
            try:
                dt = datetime.fromisoformat(s.replace("t", "T"))
            except ValueError:
                raise BadRequest(f"{field} is not a valid date: {s[:64]!r}.",
                                 [{"field": field, "problem": "not a valid date"}]) from None
            if dt.year < 2 or dt.year > 9998:
                raise BadRequest(f"{field} must be between years 2 and 9998 when given as a local date.",
                                 [{"field": field, "problem": "out of range"}], code="invalid_range")
            return from_datetime(dt.replace(tzinfo=zone or UTC, fold=0))
    return parse_time(value, now, field=field)
