"""Times, ranges and granularities.

Internally every instant is an int of epoch milliseconds (UTC): exact, cheap to compare and to
bucket, and the unit of the API's epoch form (`to_datetime` gives a timezone-aware datetime where
a library wants one).
"""
from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from rollups.errors import BadRequest

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS

# Instants outside [year 1, year 9999] cannot be formatted; boundaries at "-inf"/"+inf" use these.
MIN_MS = -62135596800000  # 0001-01-01T00:00:00Z
MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z

_UNIT_MS = {"s": SECOND_MS, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": WEEK_MS}
_RELATIVE = re.compile(r"^now(?:([+-])([0-9]{1,9})([smhdw]))?$", re.ASCII)
_DURATION = re.compile(r"^([0-9]{1,9})([smhdw])$", re.ASCII)
_EPOCH_MS = re.compile(r"^-?[0-9]{1,16}$", re.ASCII)


def now_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)


def parse_time(value: object, now: int | None = None, *, field: str = "ts") -> int:
    """Parse an API time: RFC 3339 string, epoch-millisecond integer, or `now[-+]N<unit>`.

    Returns epoch milliseconds. Raises BadRequest naming `field` on anything else.
    """
    if isinstance(value, bool):
        raise BadRequest(f"{field} must be a time, not a boolean.", [{"field": field, "problem": "not a time"}])
    if isinstance(value, int):
        if MIN_MS <= value <= MAX_MS:
            return value
        raise BadRequest(f"{field} is out of range.", [{"field": field, "problem": "epoch milliseconds out of range"}])
    if isinstance(value, float):
        if value.is_integer():
            return parse_time(int(value), now, field=field)
        raise BadRequest(f"{field} must be integer epoch milliseconds.", [{"field": field, "problem": "fractional epoch milliseconds"}])
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{field} must be a time.", [{"field": field, "problem": "missing or not a string"}])
    s = value.strip()
    m = _RELATIVE.match(s)
    if m:
        base = now if now is not None else now_ms()
        if m.group(1):
            delta = int(m.group(2)) * _UNIT_MS[m.group(3)]
            base = base - delta if m.group(1) == "-" else base + delta
        return base
    if _EPOCH_MS.match(s):
        return parse_time(int(s), now, field=field)
    return _parse_rfc3339(s, field)


_NOT_A_TIME = ("{field} is not a time: {value!r}. A time is RFC 3339 with a zone (2026-11-22T10:00:00Z), "
               "integer epoch milliseconds, or now[-N(s|m|h|d|w)] (now-15m).")


def _parse_rfc3339(s: str, field: str) -> int:
    given = s
    if len(s) < 20 or s[10] not in "Tt ":
        raise BadRequest(_NOT_A_TIME.format(field=field, value=s[:64]), [{"field": field, "problem": "not RFC 3339"}])
    if s[-1] in "zZ":
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise BadRequest(_NOT_A_TIME.format(field=field, value=given[:64]), [{"field": field, "problem": "not RFC 3339"}]) from None
    if dt.tzinfo is None:
        raise BadRequest(f"{field} needs a time zone offset (Z or +hh:mm).", [{"field": field, "problem": "no time zone"}])
    # integer arithmetic: exact to the millisecond (fractions below 1 ms are truncated)
    days = (dt.date().toordinal() - 719163)
    secs = days * 86400 + dt.hour * 3600 + dt.minute * 60 + dt.second - int(dt.utcoffset().total_seconds())
    return secs * 1000 + dt.microsecond // 1000


def format_time(ms: int) -> str:
    """RFC 3339 UTC with milliseconds: 2026-11-22T10:00:00.000Z."""
    ms = min(max(ms, MIN_MS), MAX_MS)
    secs, milli = divmod(ms, 1000)
    dt = _EPOCH + timedelta(seconds=secs)
    return f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}.{milli:03d}Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_datetime(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def from_datetime(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ValueError("naive datetime")
    days = dt.date().toordinal() - 719163
    secs = days * 86400 + dt.hour * 3600 + dt.minute * 60 + dt.second - int(dt.utcoffset().total_seconds())
    return secs * 1000 + dt.microsecond // 1000


def parse_duration(value: str, *, field: str = "step") -> int:
    """`5m`, `1h`, `7d`, `1w` -> milliseconds."""
    m = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if not m or int(m.group(1)) == 0:
        raise BadRequest(f"{field} must be a duration such as 1m, 5m, 1h, 1d.", [{"field": field, "problem": "not a duration"}])
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def format_duration(ms: int) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


def floor_to(ms: int, step: int) -> int:
    return ms - (ms % step)


def ceil_to(ms: int, step: int) -> int:
    r = ms % step
    return ms if r == 0 else ms + step - r


@dataclass(frozen=True, order=True)
class TimeRange:
    """Half-open [start, end) in epoch milliseconds."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start > self.end:
            raise ValueError(f"range start {self.start} is after its end {self.end}")

    @property
    def empty(self) -> bool:
        return self.start >= self.end

    def intersect(self, other: "TimeRange") -> "TimeRange | None":
        s, e = max(self.start, other.start), min(self.end, other.end)
        return TimeRange(s, e) if s < e else None

    def contains(self, ms: int) -> bool:
        return self.start <= ms < self.end

    def __str__(self) -> str:
        return f"[{format_time(self.start)}, {format_time(self.end)})"


# ---- granularities ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Granularity:
    """A bucket width. Fixed widths are epoch-aligned; `1mo` is the calendar month (UTC)."""

    name: str
    ms: int  # nominal width; 0 for raw; 31 days for 1mo (only used for ordering)

    @property
    def is_raw(self) -> bool:
        return self.ms == 0

    @property
    def calendar(self) -> bool:
        return self.name == "1mo"

    def floor(self, t: int) -> int:
        if self.is_raw:
            return t
        if self.calendar:
            y, mo = _ym(t)
            return _month_start(y, mo)
        return floor_to(t, self.ms)

    def ceil(self, t: int) -> int:
        f = self.floor(t)
        return t if f == t else self.next(f)

    def next(self, bucket_start: int) -> int:
        """Start of the bucket after the one starting at `bucket_start`."""
        if self.is_raw:
            raise ValueError("raw has no buckets")
        if self.calendar:
            y, mo = _ym(bucket_start)
            return _month_start(y + (mo == 12), 1 if mo == 12 else mo + 1)
        return bucket_start + self.ms

    def buckets(self, rng: TimeRange) -> list[int]:
        """Starts of the buckets that lie wholly inside rng."""
        out, t = [], self.ceil(rng.start)
        while True:
            n = self.next(t)
            if n > rng.end:
                return out
            out.append(t)
            t = n

    def __str__(self) -> str:
        return self.name


def _ym(t: int) -> tuple[int, int]:
    d = to_datetime(t)
    return d.year, d.month


def _month_start(y: int, mo: int) -> int:
    return calendar.timegm((y, mo, 1, 0, 0, 0)) * 1000


RAW = Granularity("raw", 0)
G1M = Granularity("1m", MINUTE_MS)
G1H = Granularity("1h", HOUR_MS)
G1D = Granularity("1d", DAY_MS)
G1W = Granularity("1w", WEEK_MS)
G1MO = Granularity("1mo", 31 * DAY_MS)
GRANULARITIES = {g.name: g for g in (RAW, G1M, G1H, G1D, G1W, G1MO)}
