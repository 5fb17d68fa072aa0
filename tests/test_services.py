"""The real local services started by `tierstore services up` answer as the tiers need.

Run `tierstore services up` first (make test does); TIERSTORE_HOME / TIERSTORE_PORT_BASE pick
the instance.
"""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import trino

from tiers.s3util import make_s3_client
from tierstore import services
from tierstore.layout import (
    PG_DATABASE,
    PG_USER,
    S3_ACCESS_KEY,
    S3_BUCKET,
    S3_REGION,
    S3_SECRET_KEY,
    InstanceLayout,
)


@pytest.fixture(scope="module")
def layout() -> InstanceLayout:
    layout = InstanceLayout.from_env()
    missing = [
        svc.name for svc in services.select(layout) if svc.recorded_pid() is None
    ]
    if missing:
        pytest.fail(
            f"services {', '.join(missing)} are not running for TIERSTORE_HOME={layout.home}; "
            "run `tierstore services up` first"
        )
    return layout


@pytest.fixture
def s3(layout):
    return make_s3_client(layout.s3_endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION)


@pytest.fixture
def trino_cursor(layout):
    conn = trino.dbapi.connect(host="127.0.0.1", port=layout.trino_port, user="tierstore", catalog="hive")
    yield conn.cursor()
    conn.close()


@pytest.fixture
def hive_schema(trino_cursor):
    """A throw-away Hive schema whose metadata lives in the file metastore under cold_dir."""
    name = f"test_services_{uuid.uuid4().hex[:12]}"
    trino_cursor.execute(f"CREATE SCHEMA IF NOT EXISTS hive.{name} WITH (location = 'local:///_test_schemas/{name}')")
    trino_cursor.fetchall()
    yield name
    trino_cursor.execute(f"DROP SCHEMA IF EXISTS hive.{name} CASCADE")
    trino_cursor.fetchall()


def sample_table() -> pa.Table:
    return pa.table(
        {
            "key": pa.array([f"k{i % 7}" for i in range(1000)], pa.string()),
            "value": pa.array([float(i) for i in range(1000)], pa.float64()),
        }
    )


def expected_over(table: pa.Table, threshold: float) -> tuple[int, float]:
    values = [v for v in table.column("value").to_pylist() if v >= threshold]
    return len(values), sum(values)


def test_redis_answers_ping_with_aof_enabled(layout):
    client = redis.Redis.from_url(layout.redis_url)
    try:
        assert client.ping()
        config = client.config_get("append*")
        assert config["appendonly"] == "yes"
        assert config["appendfsync"] == "everysec"
    finally:
        client.close()


def test_postgres_answers_select_1_as_tierstore(layout):
    with psycopg.connect(layout.postgres_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        user, database = conn.execute("SELECT current_user, current_database()").fetchone()
    assert (user, database) == (PG_USER, PG_DATABASE)


def test_s3_round_trips_an_object(s3):
    key = f"test_services/{uuid.uuid4().hex}.bin"
    body = uuid.uuid4().bytes * 1000
    s3.put_object(Bucket=S3_BUCKET, Key=key, Body=body)
    try:
        assert s3.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read() == body
    finally:
        s3.delete_object(Bucket=S3_BUCKET, Key=key)
    listed = s3.list_objects_v2(Bucket=S3_BUCKET, Prefix=key)
    assert listed.get("KeyCount", 0) == 0


@pytest.mark.trino
def test_trino_hive_reads_parquet_from_local_files(layout, trino_cursor, hive_schema):
    folder = f"test_services_{uuid.uuid4().hex[:12]}"
    directory = Path(layout.cold_dir) / folder
    directory.mkdir(parents=True)
    table = sample_table()
    pq.write_table(table, directory / "part-0.parquet", compression="zstd")
    try:
        trino_cursor.execute(
            f"CREATE TABLE hive.{hive_schema}.events (key varchar, value double) "
            f"WITH (external_location = 'local:///{folder}', format = 'PARQUET')"
        )
        trino_cursor.fetchall()
        trino_cursor.execute(
            f"SELECT count(*), sum(value) FROM hive.{hive_schema}.events WHERE value >= ?", [250.0]
        )
        assert tuple(trino_cursor.fetchall()[0]) == expected_over(table, 250.0)
        trino_cursor.execute(f"DROP TABLE hive.{hive_schema}.events")
        trino_cursor.fetchall()
        assert (directory / "part-0.parquet").exists(), "dropping an external table must keep its files"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.trino
def test_trino_hive_reads_parquet_from_s3(layout, s3, trino_cursor, hive_schema, tmp_path):
    prefix = f"test_services_{uuid.uuid4().hex[:12]}"
    table = sample_table()
    local = tmp_path / "part-0.parquet"
    pq.write_table(table, local, compression="zstd")
    s3.upload_file(str(local), S3_BUCKET, f"{prefix}/part-0.parquet")
    try:
        trino_cursor.execute(
            f"CREATE TABLE hive.{hive_schema}.archived (key varchar, value double) "
            f"WITH (external_location = 's3://{S3_BUCKET}/{prefix}/', format = 'PARQUET')"
        )
        trino_cursor.fetchall()
        trino_cursor.execute(
            f"SELECT count(*), sum(value) FROM hive.{hive_schema}.archived WHERE value >= ?", [100.0]
        )
        assert tuple(trino_cursor.fetchall()[0]) == expected_over(table, 100.0)
        trino_cursor.execute(f"DROP TABLE hive.{hive_schema}.archived")
        trino_cursor.fetchall()
    finally:
        s3.delete_object(Bucket=S3_BUCKET, Key=f"{prefix}/part-0.parquet")


def test_status_reports_every_service_ready(layout, capsys):
    states = services.status(layout)
    selected = services.select(layout, recorded=True)  # the four services, plus any Trino workers
    assert {name: state for name, (state, _pid) in states.items()} == {svc.name: "ready" for svc in selected}
    assert set(services.SERVICE_NAMES) <= set(states)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(selected)
    for line, svc in zip(lines, selected):
        assert line.split()[:2] == [svc.name, "ready"]
        assert f"127.0.0.1:{svc.port}" in line
