"""The archive's manifest: what one archived partition holds, object by object.

A partition is one stream's day (events + rollup_1h + rollup_1d + value-sorted copies), week
(rollup_1w + copies) or month (rollup_1mo + copies); tiers.parquet_layout names its files. Its
manifest lists every object: key, table, rows, count/sum/min/max, size, SHA-256 and ETag. The
JSON form (`to_dict`) is what is uploaded next to the objects and kept in the registry.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rollups.timeutil import DAY_MS, format_time
from tiers import parquet_layout as PL

#: the tables whose files carry the partition's event count and value sum
MEASURED_TABLES = ("events", "rollup_1h", "rollup_1d", "rollup_1w", "rollup_1mo", "totals_1h", "totals_1d")


class ArchiveVerifyFailed(RuntimeError):
    """An uploaded object is not what was sent (size, ETag or checksum differ)."""


@dataclass
class Manifest:
    tenant: str
    stream: str
    period: str  # day | week | month | pack (consecutive small days: tiers.archive_packs)
    start: int   # epoch ms
    objects: list[dict[str, Any]] = field(default_factory=list)
    end_ms: int | None = None  # a pack's end (the day after its last day); others derive it
    days: list[dict[str, Any]] | None = None  # a pack's days: {start, rows, count, sum, source_sha256}
    #: a rewrite's object-key version (tiers.archive_rewrite): its objects and manifest live at keys
    #: carrying it, so a rewrite never overwrites the objects a registered manifest names; None: the
    #: plain layout keys the archive job writes
    key_version: str | None = None

    @property
    def end(self) -> int:
        if self.end_ms is not None:
            return self.end_ms
        return PL.PERIODS[self.period].next(self.start)

    @property
    def name(self) -> str:
        if self.period == "pack":
            return f"{PL.day_name(self.start)}..{PL.day_name(self.end - DAY_MS)}"
        return PL.period_name(PL.PERIODS[self.period], self.start)

    @property
    def raw(self) -> bool:
        """True for partitions holding raw events (day, pack)."""
        return self.period in ("day", "pack")

    def day_starts(self) -> list[int]:
        """The days holding events: a pack's days, a day's own start, [] for weeks and months."""
        if self.period == "pack":
            return [int(d["start"]) for d in self.days or ()]
        return [self.start] if self.period == "day" else []

    def totals(self) -> tuple[int, int, float]:
        """(raw rows, event count, value sum) of the partition, from its main table."""
        main = "events" if self.raw else PL.TABLE_OF[PL.PERIODS[self.period].name]
        for o in self.objects:
            if o["table"] == main:
                return (o["rows"] if self.raw else 0), o["count"], o["sum"]
        return 0, 0, 0.0

    def object(self, table: str) -> dict[str, Any] | None:
        return next((o for o in self.objects if o["table"] == table), None)

    def check_consistent(self) -> None:
        """Raise ArchiveVerifyFailed unless the raw events and every rollup hold the same event
        count and value sum."""
        measured = [o for o in self.objects if o["table"] in MEASURED_TABLES]
        if not measured:
            return
        ref = measured[0]
        for o in measured[1:]:
            scale = max(o.get("abs") or 0.0, ref.get("abs") or 0.0)  # sum |v| (absent in older manifests)
            if o["count"] != ref["count"] or not PL.close(o["sum"], ref["sum"], scale):
                raise ArchiveVerifyFailed(f"{self.tenant}/{self.stream} {self.period} {self.name}: {o['table']} "
                                          f"holds count {o['count']} sum {o['sum']}, {ref['table']} {ref['count']} "
                                          f"{ref['sum']}")

    def to_dict(self) -> dict[str, Any]:
        rows, count, total = self.totals()
        extra = {} if self.period != "pack" else {"days": self.days or []}
        if self.key_version:
            extra["key_version"] = self.key_version
        return {**extra, "version": 1, "tenant": self.tenant, "stream": self.stream, "period": self.period,
                "partition": self.name, "start_ms": self.start, "end_ms": self.end,
                "start": format_time(self.start), "end": format_time(self.end),
                "raw_rows": rows, "event_count": count, "value_sum": total, "objects": self.objects}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        if d["period"] == "pack":
            return cls(d["tenant"], d["stream"], "pack", int(d["start_ms"]), list(d["objects"]), int(d["end_ms"]),
                       list(d.get("days") or []), d.get("key_version"))
        return cls(d["tenant"], d["stream"], d["period"], int(d["start_ms"]), list(d["objects"]),
                   key_version=d.get("key_version"))


__all__ = ["Manifest", "ArchiveVerifyFailed"]
