"""The cold tier's two query engines over the same Parquet files: DuckDB (embedded) and Trino.

Both run the SAME statements: `SELECT ... FROM {source} WHERE {scope} <range predicates> ...`
with every value a bound parameter. Only the source differs:
    DuckDB  source = read_parquet(?), the list of final files (never temp files) bound as a
            parameter; scope is empty. Rollups are read by name (union_by_name) with a `sum_lo`
            column always present: NULL in files written before it existed.
    Trino   source = hive."<schema>"."<table>" (Hive tables over the same folders, DDL in
            sql/trino/), scope = `tenant = ? AND stream = ? AND <partition> BETWEEN ? AND ? AND`.
Identifiers (schema and table names) are validated and quoted; Trino's CALL procedures take no
parameters, so partitions are registered with sync_partition_metadata, whose only arguments are
those validated identifiers.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import pyarrow as pa

from rollups.errors import TierUnavailable
from tiers.errors import translate

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_LOCATION = re.compile(r"^local:///[A-Za-z0-9_./-]*$")


def ident(name: str) -> str:
    """A validated, double-quoted SQL identifier."""
    if not _IDENT.match(name):
        raise ValueError(f"not a safe identifier: {name!r}")
    return f'"{name}"'


@dataclass(frozen=True)
class Scan:
    """What one sub-select reads: a table's partitions of one stream, or an explicit file list."""

    table: str            # events | rollup_1h | ...
    column: str           # partition column: day | week | month
    lo: str               # first partition value (inclusive)
    hi: str               # last partition value (inclusive)
    files: tuple[str, ...]  # the final files among them (DuckDB reads these)


class Engine:
    name: str

    def source(self, scan: Scan, tenant: str, stream: str) -> tuple[str, list]:
        """(`FROM ... WHERE` prefix text, its parameters) for one scan."""
        raise NotImplementedError

    def query(self, sql: str, params: Sequence) -> pa.Table:
        raise NotImplementedError

    def sync_partitions(self, tables: Sequence[str]) -> None:
        """Make the engine see the partition folders of these tables as they are now."""

    def health(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class DuckDBEngine(Engine):
    name = "duckdb"

    def __init__(self, root: Path) -> None:
        import duckdb

        self._duckdb = duckdb
        self.root = root
        self._conn = duckdb.connect(":memory:")
        self._conn.execute("SET threads = 2")
        self._local = threading.local()

    def _cursor(self):
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._local.cur = self._conn.cursor()
        return cur

    def source(self, scan, tenant, stream):
        if scan.table.startswith("rollup_"):  # files from before sum_lo lack it: NULL there (read as 0)
            return ("(SELECT * FROM read_parquet(?, union_by_name = true) UNION ALL BY NAME "
                    "SELECT CAST(NULL AS DOUBLE) AS sum_lo WHERE false) AS src WHERE "), [list(scan.files)]
        return "read_parquet(?) WHERE ", [list(scan.files)]

    def query(self, sql, params):
        with translate("cold", "The cold tier cannot read its files"):
            return self._cursor().sql(sql, params=list(params)).to_arrow_table()

    def health(self):
        try:
            if not self.root.is_dir():
                raise OSError(f"{self.root} is not a directory")
            next(iter(self.root.iterdir()), None)
            self._cursor().execute("SELECT 1").fetchall()
        except Exception as exc:  # noqa: BLE001 - any failure means unavailable
            raise TierUnavailable("cold", f"The cold tier's directory is not readable: {exc}") from exc

    def close(self):
        self._conn.close()


TRINO_TABLES = ("events", "rollup_1h", "rollup_1d", "rollup_1w", "rollup_1mo")


class TrinoEngine(Engine):
    """Trino's Hive catalog `hive`, schema `schema`, tables located at `local:///<rel>/<table>`."""

    name = "trino"

    def __init__(self, url: str, schema: str, location: str, catalog: str = "hive", timeout: float = 60.0) -> None:
        import trino
        from urllib.parse import urlparse

        if not _LOCATION.match(location):
            raise ValueError(f"not a safe Trino location: {location!r}")
        u = urlparse(url)
        self._trino = trino
        self._connect = lambda: trino.dbapi.connect(
            host=u.hostname, port=u.port or (443 if u.scheme == "https" else 80), http_scheme=u.scheme,
            user="tierstore", catalog=catalog, request_timeout=timeout)
        # the root itself (local:///) keeps "local://" so that root + "/events" is local:///events
        self.catalog, self.schema, self.location = catalog, schema, location.rstrip("/")
        if self.location.endswith(":"):
            self.location += "//"
        ident(catalog), ident(schema)
        self._local = threading.local()
        self._ready = False
        self._ddl_lock = threading.Lock()

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _execute(self, sql: str, params: Sequence | None = None) -> tuple[list, list[str]]:
        try:
            cur = self._conn().cursor()
            cur.execute(sql, list(params) if params else None)
            rows = cur.fetchall()
            return rows, [d[0] for d in cur.description or []]
        except self._trino.exceptions.TrinoUserError:
            raise
        except (self._trino.exceptions.TrinoQueryError, self._trino.exceptions.TrinoExternalError,
                self._trino.exceptions.HttpError, OSError) as exc:
            self._local.conn = None
            raise TierUnavailable("cold", f"Trino failed: {exc}") from exc
        except Exception as exc:  # requests' connection errors and the like
            self._local.conn = None
            if type(exc).__module__.startswith(("requests", "urllib3")):
                raise TierUnavailable("cold", f"Trino is unreachable: {exc}") from exc
            raise

    def ensure_tables(self) -> None:
        """Create the schema and tables (sql/trino/*.sql) if missing; once per process."""
        if self._ready:
            return
        with self._ddl_lock:
            if self._ready:
                return
            for stmt in ddl_statements():
                # the schema wants a directory URI (local:///x/); tables append '/<table>' to the root
                where = self.location + "/" if stmt.lstrip().upper().startswith("CREATE SCHEMA") else self.location
                self._execute(stmt.format(catalog=ident(self.catalog), schema=ident(self.schema)),
                              [where] if "?" in stmt else None)
            self._ready = True

    def table(self, name: str) -> str:
        return f"{ident(self.catalog)}.{ident(self.schema)}.{ident(name)}"

    def source(self, scan, tenant, stream):
        self.ensure_tables()
        col = ident(scan.column)
        return (f"{self.table(scan.table)} WHERE tenant = ? AND stream = ? AND {col} >= ? AND {col} <= ? AND ",
                [tenant, stream, scan.lo, scan.hi])

    def query(self, sql, params):
        rows, names = self._execute(sql, params)
        cols = list(zip(*rows)) if rows else [[] for _ in names]
        return pa.table({n: list(c) for n, c in zip(names, cols)})

    def sync_partitions(self, tables):
        self.ensure_tables()
        for t in tables:
            if t in TRINO_TABLES:
                self._execute(f"CALL {ident(self.catalog)}.system.sync_partition_metadata("
                              f"schema_name => '{self.schema}', table_name => '{t}', mode => 'FULL')")

    def health(self):
        try:
            self._execute("SELECT 1")
        except self._trino.exceptions.TrinoUserError as exc:
            raise TierUnavailable("cold", f"Trino refused a trivial query: {exc}") from exc

    def close(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def ddl_statements() -> list[str]:
    """The Trino DDL of sql/trino/, in file order, one statement each."""
    folder = resources.files("sql").joinpath("trino")
    out = []
    for f in sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name):
        text = "\n".join(line for line in f.read_text().splitlines() if not line.lstrip().startswith("--"))
        out.extend(s.strip() for s in text.split(";") if s.strip())
    return out
