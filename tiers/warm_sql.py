"""The warm tier's tables as SQLAlchemy Core metadata, and how its statements reach psycopg.

sql/migrations creates these tables (and the TimescaleDB-only DDL); this module only describes
them, so statements are composed by SQLAlchemy Core — identifiers quoted by its preparer, values
always bound — and compiled for the psycopg 3 dialect into SQL text with `%(name)s` placeholders.
They run on the tier's own psycopg pool (no SQLAlchemy engine). Compiling costs milliseconds (tens
for a long union), so static statements are compiled once at import and builders of dynamic ones
are cached on their shape (functools); each returns a `Statement`, run with its parameters' values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, Text, cast, extract, func, literal_column
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION, TIMESTAMP
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, ColumnElement, Executable, FunctionElement

from rollups.timeutil import G1D, G1H, G1M, MAX_MS, MIN_MS

DIALECT = postgresql.psycopg.dialect()
ROLLUPS = (G1M, G1H, G1D)
INTERVALS = {"1m": "1 minute", "1h": "1 hour", "1d": "1 day"}
EPOCH = literal_column("timestamptz 'epoch'")
TSTZ = TIMESTAMP(timezone=True)

metadata = MetaData()

events = Table("events", metadata,
               Column("stream_id", Integer, nullable=False), Column("key_id", BigInteger, nullable=False),
               Column("ts", TSTZ, nullable=False), Column("value", DOUBLE_PRECISION, nullable=False),
               Column("id", Text))
# minute buckets whose raw events changed since the last refresh (sql/migrations/common)
warm_dirty = Table("warm_dirty", metadata,
                   Column("id", BigInteger, primary_key=True), Column("stream_id", Integer, nullable=False),
                   Column("bucket", TSTZ, nullable=False))
streams = Table("streams", metadata,
                Column("id", Integer, primary_key=True), Column("tenant", Text, nullable=False),
                Column("stream", Text, nullable=False))
keys = Table("keys", metadata,
             Column("id", BigInteger, primary_key=True), Column("stream_id", Integer, nullable=False),
             Column("key", Text, nullable=False))


def _partial_columns() -> list[Column]:
    return [Column("bucket", TSTZ, nullable=False), Column("count", BigInteger, nullable=False),
            Column("sum", DOUBLE_PRECISION, nullable=False), Column("min", DOUBLE_PRECISION, nullable=False),
            Column("max", DOUBLE_PRECISION, nullable=False),
            # postgres mode: the sum's low part (exact pairs, tiers/warm_pairs.py); absent in timescale mode
            Column("sum_lo", DOUBLE_PRECISION, nullable=False)]


def _per_key(name: str) -> Table:
    return Table(name, metadata, Column("stream_id", Integer, nullable=False),
                 Column("key_id", BigInteger, nullable=False), *_partial_columns())


# per (stream, key, bucket): tables (postgres mode) or continuous aggregates (timescale mode)
rollup = {g.name: _per_key(f"rollup_{g.name}") for g in ROLLUPS}
# per (stream, bucket), every key together: a series of a whole stream reads one row per bucket
total = {g.name: Table(f"total_{g.name}", metadata, Column("stream_id", Integer, nullable=False),
                       *_partial_columns()) for g in ROLLUPS}
# postgres mode: inserts pre-aggregated per (stream, key, minute), folded in by refresh
warm_delta = _per_key("warm_delta")
# postgres mode: 1h/1d buckets of hot-owned time whose rollup rows refresh left stale on purpose
# (recomputed from the level below before b_warm passes bucket_end; sql/migrations/warm_postgres)
warm_stale = Table("warm_stale", metadata,
                   Column("grain", Text, primary_key=True), Column("stream_id", Integer, primary_key=True),
                   Column("bucket", TSTZ, primary_key=True), Column("bucket_end", TSTZ, nullable=False))


def clamp(ms: int) -> int:
    """Events lie in [MIN_MS, MAX_MS]; wider bounds are clamped to stay inside PostgreSQL's range."""
    return min(max(ms, MIN_MS), MAX_MS + 1)


class epoch_ms(FunctionElement):
    """timestamptz of an epoch-milliseconds bigint expression (exact; beyond Python's datetime range)."""
    type = TSTZ
    name = "epoch_ms"
    inherit_cache = True


@compiles(epoch_ms)
def _compile_epoch_ms(element, compiler, **kw) -> str:
    (ms,) = element.clauses
    return "(timestamptz 'epoch' + %s * interval '1 millisecond')" % compiler.process(ms, **kw)


def ms_of(column: ColumnElement) -> ColumnElement:
    """A timestamptz expression as exact epoch milliseconds (bigint)."""
    return cast(extract("epoch", column) * literal_column("1000"), BigInteger)


def date_bin(step: Any, column: ColumnElement) -> ColumnElement:
    """The epoch-aligned bucket of `column`; `step` is an interval expression or bound parameter."""
    return func.date_bin(step, column, EPOCH, type_=TSTZ)


class CreateTempTableAs(Executable, ClauseElement):
    """CREATE TEMP TABLE name ON COMMIT DROP AS <select>."""
    inherit_cache = False

    def __init__(self, name: str, select):
        self.name, self.select = name, select


@compiles(CreateTempTableAs)
def _compile_create_temp(element, compiler, **kw) -> str:
    return (f"CREATE TEMP TABLE {compiler.preparer.quote(element.name)} ON COMMIT DROP AS "
            + compiler.process(element.select, **kw))


class Analyze(Executable, ClauseElement):
    inherit_cache = False

    def __init__(self, name: str):
        self.name = name


@compiles(Analyze)
def _compile_analyze(element, compiler, **kw) -> str:
    return "ANALYZE " + compiler.preparer.quote(element.name)


class Call(Executable, ClauseElement):
    """CALL <procedure(args)>, the procedure written as a SQL function expression (func.name(...))."""
    inherit_cache = False

    def __init__(self, procedure: FunctionElement):
        self.procedure = procedure


@compiles(Call)
def _compile_call(element, compiler, **kw) -> str:
    return "CALL " + compiler.process(element.procedure, **kw)


class named(ColumnElement):
    """A named argument of a function call: name => value."""
    inherit_cache = False

    def __init__(self, name: str, value: ColumnElement):
        self.name, self.value = name, value


@compiles(named)
def _compile_named(element, compiler, **kw) -> str:
    return f"{compiler.preparer.quote(element.name)} => {compiler.process(element.value, **kw)}"


@dataclass(frozen=True)
class Statement:
    """A compiled statement: SQL text with %(name)s placeholders and the values bound at build time."""
    sql: str
    bound: dict[str, Any]

    @classmethod
    def of(cls, stmt: ClauseElement) -> "Statement":
        compiled = stmt.compile(dialect=DIALECT)
        # values go to psycopg as they are (no SQLAlchemy bind processors run): bind plain values
        # parameters left without a value stay out: a missing one fails in psycopg, not as NULL
        return cls(compiled.string, {k: v for k, v in (compiled.params or {}).items() if v is not None})

    def params(self, values: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every parameter's value: those bound at build time and `values`. Always a dict (even
        empty): with parameters psycopg reads %% as the % that SQLAlchemy escaped."""
        return {**self.bound, **(values or {})}

    def run(self, conn: psycopg.Connection, values: dict[str, Any] | None = None) -> psycopg.Cursor:
        return conn.execute(self.sql, self.params(values))


def run(conn: psycopg.Connection, stmt: ClauseElement, params: dict[str, Any] | None = None) -> psycopg.Cursor:
    """Compile and execute a one-off statement (cache the Statement of anything repeated)."""
    return Statement.of(stmt).run(conn, params)


def copy_sql(table: Table, options: str) -> str:
    """COPY table (its columns) FROM STDIN <options>, identifiers quoted by the dialect."""
    prep = DIALECT.identifier_preparer
    columns = ", ".join(prep.quote(c.name) for c in table.columns)
    return f"COPY {prep.format_table(table)} ({columns}) FROM STDIN {options}"

