"""What a compliance report's files hold: the row schemas of each kind, the rows themselves, and
one writer per format (csv | parquet | json), plus the SHA-256 helpers the manifest records.

    kind=totals  TOTALS_SCHEMA: stream, key, count, sum, min, max, avg (keys in byte order)
    kind=events  EVENTS_SCHEMA: time (RFC 3339 ms), ts_ms, stream, key, value, id
                 (ordered by ts, then key, value)
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rollups.timeutil import format_time

if TYPE_CHECKING:
    from scheduler.reports import ReportRequest

MEDIA_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet", "json": "application/json"}
TOTALS_SCHEMA = pa.schema([("stream", pa.string()), ("key", pa.string()), ("count", pa.int64()),
                           ("sum", pa.float64()), ("min", pa.float64()), ("max", pa.float64()),
                           ("avg", pa.float64())])
EVENTS_SCHEMA = pa.schema([("time", pa.string()), ("ts_ms", pa.int64()), ("stream", pa.string()),
                           ("key", pa.string()), ("value", pa.float64()), ("id", pa.string())])


def canonical_csv(t: pa.Table) -> bytes:
    buf = io.BytesIO()
    pacsv.write_csv(t, buf, pacsv.WriteOptions(include_header=False))
    return buf.getvalue()



def totals_rows(merged: pa.Table, stream: str) -> pa.Table:
    merged = merged.sort_by([("key", "ascending")])
    n = merged.num_rows
    avg = pc.divide(merged["sum"], pc.cast(merged["count"], pa.float64())) if n else pa.array([], pa.float64())
    return pa.table({"stream": pa.array([stream] * n, pa.string()), "key": merged["key"], "count": merged["count"],
                     "sum": merged["sum"], "min": merged["min"], "max": merged["max"], "avg": avg},
                    schema=TOTALS_SCHEMA)


def events_rows(t: pa.Table, stream: str) -> pa.Table:
    t = t.sort_by([("ts", "ascending"), ("key", "ascending"), ("value", "ascending")])
    times = [format_time(v) for v in t["ts"].to_pylist()]
    return pa.table({"time": pa.array(times, pa.string()), "ts_ms": t["ts"],
                     "stream": pa.array([stream] * t.num_rows, pa.string()), "key": t["key"],
                     "value": t["value"], "id": t["id"]}, schema=EVENTS_SCHEMA)


# ---- output files --------------------------------------------------------------------------------

class _Writer:
    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path, self.schema, self.rows = path, schema, 0

    def write(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        self._write(table.cast(self.schema))

    def _write(self, table: pa.Table) -> None:
        raise NotImplementedError

    def close(self, manifest: list[dict[str, Any]]) -> int:
        return self.rows

    def abort(self) -> None:
        pass


class _ArrowFileWriter(_Writer):
    """A writer over a pyarrow file writer `self._w` (CSV, Parquet)."""

    _w: Any

    def close(self, manifest):
        self._w.close()
        return self.rows

    def abort(self):
        try:
            self._w.close()
        except Exception:  # noqa: BLE001 - already closed
            pass


class _CsvWriter(_ArrowFileWriter):
    def __init__(self, path, schema):
        super().__init__(path, schema)
        self._w = pacsv.CSVWriter(str(path), schema)

    def _write(self, table):
        self._w.write_table(table)


class _ParquetWriter(_ArrowFileWriter):
    def __init__(self, path, schema, meta: dict[str, str]):
        super().__init__(path, schema.with_metadata({"tierstore.report": json.dumps(meta)}))
        self._w = pq.ParquetWriter(str(path), self.schema, compression="zstd")

    def _write(self, table):
        self._w.write_table(table.replace_schema_metadata(self.schema.metadata))


class _JsonWriter(_Writer):
    """{"report": {...}, "rows": [...], "manifest": [...]} written row by row."""

    def __init__(self, path, schema, meta: dict[str, Any]):
        super().__init__(path, schema)
        self._f = open(path, "w", encoding="utf-8")
        self._f.write('{"report": ' + json.dumps(meta) + ',\n "rows": [')
        self._first = True

    def _write(self, table):
        for row in table.to_pylist():
            self._f.write(("\n  " if self._first else ",\n  ") + json.dumps(row, ensure_ascii=False))
            self._first = False

    def close(self, manifest):
        self._f.write('\n ],\n "manifest": ' + json.dumps(manifest) + "\n}\n")
        self._f.close()
        return self.rows

    def abort(self):
        if not self._f.closed:
            self._f.close()


def open_writer(req: ReportRequest, path: Path, report_id: str, version: int) -> _Writer:
    schema = TOTALS_SCHEMA if req.kind == "totals" else EVENTS_SCHEMA
    meta = {"id": report_id, "tenant": req.tenant, "stream": req.stream, "from": format_time(req.from_ms),
            "to": format_time(req.to_ms), "kind": req.kind, "catalog_version": version}
    if req.format == "csv":
        return _CsvWriter(path, schema)
    if req.format == "parquet":
        return _ParquetWriter(path, schema, meta)
    return _JsonWriter(path, schema, meta)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
