"""Many day partitions written at once: what export_cold and `tierstore import` share.

Parquet encoding, zstd and file I/O release the GIL, so a few days written by threads use both
cores and overlap the disk waits. `in_threads` bounds how many days' tables are alive at once;
`rebuild_periods` rebuilds the weeks and months holding many days, each once. Both pass
`durable` down to tiers.parquet_layout: False when the caller makes every file durable at once
(os.sync()) before the commit that makes them owned.
"""
from __future__ import annotations

from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterator

import pyarrow as pa

from tiers import parquet_layout as PL

WORKERS = 4  # days written at once


def rebuild_periods(partitions, tenant: str, stream: str, days: list[int], *, durable: bool) -> None:
    """The weeks and months holding these days rebuilt from their daily files, a few at a time."""
    if not days:
        return
    periods = sorted({(g, g.floor(d)) for d in days for g in PL.PERIOD_GRANULARITIES}, key=lambda p: (p[0].name, p[1]))
    partitions.changed(tenant, stream)
    in_threads(lambda g, start: PL.write_period(partitions.layout, tenant, stream, g, start, durable=durable),
               iter(periods), lambda n: None)
    partitions.changed(tenant, stream)


def in_threads(fn, items: Iterator[tuple], advance: Callable[[int], None], workers: int = WORKERS) -> list[tuple[tuple, Any]]:
    """[(item, fn(*item))] run `workers` at a time (Parquet encoding, zstd and file I/O release
    the GIL); advance(rows of item[-1]) after each when it is a table. Items are consumed as
    workers free up, so only a few days' tables are alive at once."""
    out: list[tuple[tuple, Any]] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="days") as pool:
        pending: dict = {}
        for item in items:
            pending[pool.submit(fn, *item)] = item
            if len(pending) >= 2 * workers:
                _collect(pending, out, advance, FIRST_COMPLETED)
        _collect(pending, out, advance, ALL_COMPLETED)
    return out


def _collect(pending: dict, out: list, advance: Callable[[int], None], when) -> None:
    finished, _ = wait(list(pending), return_when=when)
    for f in finished:
        item = pending.pop(f)
        out.append((item, f.result()))
        if isinstance(item[-1], pa.Table):
            advance(item[-1].num_rows)


__all__ = ["in_threads", "rebuild_periods", "WORKERS"]
