"""The time rule of `tierstore import`, one for every format (CSV, NDJSON, Parquet).

A `ts` value is accepted as:
  - epoch milliseconds: an integer (a JSON or Parquet integer, or digits in text), always;
  - RFC 3339 text with a zone (`2025-02-01T10:00:00Z`, `...+02:00`; `T` or a space), always;
  - a date and time without a zone (`2025-02-01T10:00:00`, a Parquet timestamp without a time
    zone), only with `--assume-utc` (read as UTC);
  - a date only (`2025-02-01`, a Parquet date), as midnight, only with `--assume-utc` (UTC).
Anything else is refused with the row, the column and the cause; a missing zone says
"no time zone: add Z or an offset, or pass --assume-utc".
"""
from __future__ import annotations

import re
from datetime import date, datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from rollups.errors import BadRequest
from rollups.timeutil import parse_time

NO_ZONE = "no time zone: add Z or an offset, or pass --assume-utc"
_EPOCH = re.compile(r"^-?\d+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NAIVE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")


class TimeProblem(ValueError):
    """One value that is not a time under the rule (the message is the cause)."""


def parse_import_time(value: str | int | None, assume_utc: bool) -> int:
    """Epoch ms of one `ts` value (text or integer) under the module's rule; raises TimeProblem."""
    if value is None:
        raise TimeProblem("missing")
    if isinstance(value, int):
        return _checked(value)
    s = value.strip()
    if _EPOCH.match(s):
        return _checked(int(s))
    if _DATE.match(s):
        if not assume_utc:
            raise TimeProblem(f"date only {s!r}, {NO_ZONE}")
        try:
            d = date.fromisoformat(s)
        except ValueError:
            raise TimeProblem(f"not a date: {s!r}") from None
        return _checked(int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp()) * 1000)
    if _NAIVE.match(s):
        if not assume_utc:
            raise TimeProblem(f"{s!r} has {NO_ZONE}")
        s += "Z"
    try:
        return parse_time(s)
    except BadRequest as exc:
        problem = (exc.details or [{}])[0].get("problem")
        if problem == "no time zone":
            raise TimeProblem(f"{s!r} has {NO_ZONE}") from None
        raise TimeProblem(f"{s[:64]!r} is not RFC 3339 or epoch milliseconds ({exc.message})") from None


def _checked(ms: int) -> int:
    try:
        return parse_time(ms)
    except BadRequest as exc:
        raise TimeProblem(f"{ms}: {exc.message}") from None


def ts_column(col: pa.ChunkedArray, assume_utc: bool, where) -> pa.Array:
    """Epoch ms (int64) of a whole `ts` column of any type; `where(row, cause)` builds the error
    raised for a bad value (row 1-based)."""
    t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        if t.tz is None if pa.types.is_timestamp(t) else True:
            if not assume_utc:
                kind = "a date" if pa.types.is_date(t) else "a timestamp without a time zone"
                raise where(_first_valid(col), f"{kind} ({t}): {NO_ZONE}")
        unit = pc.cast(col, pa.timestamp("ms")) if pa.types.is_date(t) else col
        ms = pc.cast(pc.cast(unit, pa.timestamp("ms", "UTC")) if pa.types.is_timestamp(unit.type) else unit,
                     pa.int64())
        return _no_nulls(ms, where)
    if pa.types.is_integer(t):
        fast = _integers_in_range(col.cast(pa.int64()))
        if fast is not None:
            return fast
        out = []
        for i, v in enumerate(col.to_pylist()):
            try:
                out.append(parse_import_time(v, assume_utc))
            except TimeProblem as exc:
                raise where(i + 1, str(exc)) from None
        return pa.array(out, pa.int64())
    text = col.cast(pa.string())
    if len(text) and pc.all(pc.match_substring_regex(text, r"^-?\d{1,18}$")).as_py():  # all epoch ms as digits
        fast = _integers_in_range(text.cast(pa.int64()))
        if fast is not None:
            return fast
    out = []
    for i, v in enumerate(text.to_pylist()):
        try:
            out.append(parse_import_time(v, assume_utc))
        except TimeProblem as exc:
            raise where(i + 1, str(exc)) from None
    return pa.array(out, pa.int64())


def _first_valid(col: pa.ChunkedArray) -> int:
    valid = pc.indices_nonzero(pc.is_valid(col)) if hasattr(pc, "indices_nonzero") else None
    return int(valid[0].as_py()) + 1 if valid is not None and len(valid) else 1


def _no_nulls(ms: pa.ChunkedArray, where) -> pa.Array:
    arr = ms.combine_chunks() if isinstance(ms, pa.ChunkedArray) else ms
    if arr.null_count:
        raise where(int(pc.indices_nonzero(pc.is_null(arr))[0].as_py()) + 1, "missing")
    for i, v in ((0, pc.min(arr).as_py()), (0, pc.max(arr).as_py())):
        if v is not None:
            try:
                _checked(v)
            except TimeProblem as exc:
                raise where(1 + int(pc.index(arr, v).as_py()), str(exc)) from None
    return arr


def _integers_in_range(ms: pa.ChunkedArray) -> pa.Array | None:
    """The column as one int64 array when it has no nulls and its min and max are valid times
    (so every value is); None when some value is not (the caller then finds the first bad row)."""
    arr = ms.combine_chunks() if isinstance(ms, pa.ChunkedArray) else ms
    if arr.null_count:
        return None
    bounds = pc.min_max(arr)
    for v in (bounds["min"].as_py(), bounds["max"].as_py()):
        if v is not None:
            try:
                _checked(v)
            except TimeProblem:
                return None
    return arr
