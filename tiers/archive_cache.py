"""A local disk cache of archived objects, by SHA-256: the archive's value-sorted lists and rollups
read from the machine's disk instead of S3 once any process on it has read them.

Archived objects never change in place (a rewrite writes new objects; the manifest names each
object with its SHA-256), so a file named by its SHA-256 is valid for as long as it exists:
nothing is invalidated, and processes sharing the folder (gunicorn workers, replicas on one
machine, restarts) share it. The archive job and the import keep a copy of each file they upload
(`adopt`: the staged file whose bytes the manifest's SHA-256 was computed from), so a new
partition's first read is local too. Otherwise read-through, filled in the background: `path(obj)` answers the
local file when it holds the object, else schedules one download (the whole object, checked
against the manifest's SHA-256 and size, written to a temporary name and renamed in) and answers
None, so the caller reads S3 as before and the first ask never waits for a whole object. Objects
larger than `object_max` bytes are not cached. The folder is kept under `max_bytes` (bytes) by
removing the least recently used files (a file's mtime is set at every use) down to LOW_WATER of
it, so the folder is listed once per that much churn, not at every file added once full (6,737
files listed per adopted object made a history import's archive upload 2x slower); a file removed
while another process reads it stays readable to that reader (POSIX unlink).
The same idea as Thanos' and Mimir's store-gateway caches of object-store blocks on local disk.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("tierstore.tiers.archive_cache")
_FETCHERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="archive-cache")
LOW_WATER = 0.9  # an eviction removes least recently used files down to this fraction of max_bytes


class ObjectCache:
    """Archived objects on local disk under `root` (module doc).

    `fetch(key) -> bytes` reads a whole object from S3 (called on a background thread; its errors
    only skip the object). `max_bytes`, `object_max`: bytes."""

    def __init__(self, root: Path, max_bytes: int, object_max: int, fetch: Callable[[str], bytes]) -> None:
        self.root, self.max_bytes, self.object_max, self._fetch = Path(root), max_bytes, object_max, fetch
        self._lock = threading.Lock()
        self._pending: dict[str, Future] = {}
        self._held: int | None = None  # bytes in the folder, counted on first use

    def path(self, obj: dict[str, Any]) -> Path | None:
        """The local file of manifest object `obj` ({key, size, sha256}) when cached (its use
        recorded), else None after scheduling its download (when it can be cached)."""
        sha, size = obj.get("sha256") or "", int(obj.get("size") or 0)
        if not sha or not 0 < size <= self.object_max or size > self.max_bytes:
            return None
        local = self.root / f"{sha}.parquet"
        try:
            os.utime(local)  # least recently used goes first
            return local
        except FileNotFoundError:
            pass
        except OSError:
            return None
        with self._lock:
            if sha not in self._pending:
                self._pending[sha] = _FETCHERS.submit(self._download, obj["key"], sha, size, local)
        return None

    def adopt(self, path: Path, obj: dict[str, Any]) -> None:
        """Keep a copy of local file `path`, just uploaded as manifest object `obj` (its SHA-256 and
        size computed from these bytes), so that even the first read of a new partition is local.
        Never raises (a cache)."""
        sha, size = obj.get("sha256") or "", int(obj.get("size") or 0)
        if not sha or not 0 < size <= self.object_max or size > self.max_bytes:
            return
        local = self.root / f"{sha}.parquet"
        try:
            if local.exists():
                os.utime(local)
                return
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".part-{os.getpid()}-{threading.get_ident()}-{sha[:16]}"
            try:
                shutil.copyfile(path, tmp)
                if tmp.stat().st_size != size:
                    raise OSError(f"{path} changed while copied")
                os.replace(tmp, local)
            finally:
                tmp.unlink(missing_ok=True)
            self._added(size)
        except Exception as exc:
            log.warning("archive cache: %s not kept (%s)", path, exc)

    def wait(self) -> None:
        """Wait for the downloads scheduled so far (tests, benchmarks)."""
        with self._lock:
            pending = list(self._pending.values())
        for f in pending:
            f.result()

    def _download(self, key: str, sha: str, size: int, local: Path) -> None:
        try:
            data = self._fetch(key)
            if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
                log.warning("archive cache: %s does not match its manifest (size or SHA-256); not cached", key)
                return
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".part-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, local)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self._added(size)
        except Exception as exc:  # a cache: S3 or disk trouble only means reading S3 next time too
            log.warning("archive cache: %s not cached (%s)", key, exc)
        finally:
            with self._lock:
                self._pending.pop(sha, None)

    def _added(self, size: int) -> None:
        with self._lock:
            if self._held is None:
                self._held = sum(p.stat().st_size for p in self.root.glob("*.parquet"))
            else:
                self._held += size
            if self._held <= self.max_bytes:
                return
            files = []
            for p in self.root.glob("*.parquet"):
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                files.append((st.st_mtime_ns, st.st_size, p))
            files.sort()
            held = sum(s for _, s, _ in files)
            target = int(self.max_bytes * LOW_WATER)
            for _, s, p in files:
                if held <= target:
                    break
                p.unlink(missing_ok=True)
                held -= s
            self._held = held


__all__ = ["ObjectCache"]
