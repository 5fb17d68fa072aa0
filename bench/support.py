"""What several benches share: an instance of their own inside the local services."""
from __future__ import annotations

import statistics
import time
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
import pyarrow as pa
import redis


def isolated(settings, redis_db: int, database: str, *, reset: bool = True, **update):
    """`settings` moved to Redis database `redis_db` and PostgreSQL database `database`, plus any
    other `update`s (pydantic model_copy). With `reset` (default) both are emptied first: the Redis
    database flushed, the PostgreSQL database dropped and created."""
    parts = urlsplit(settings.redis_url)
    redis_url = urlunsplit((parts.scheme, parts.netloc, f"/{redis_db}", parts.query, parts.fragment))
    if reset:
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        client.close()
        with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{database}"')
    pg = urlsplit(settings.postgres_url)
    postgres_url = urlunsplit((pg.scheme, pg.netloc, f"/{database}", pg.query, pg.fragment))
    return settings.model_copy(update={"redis_url": redis_url, "postgres_url": postgres_url, **update})


def ingest_zipf(hot, tenant: str, stream: str, n_events: int, n_keys: int, start: int, span: int, *,
                seed: int, now: int, batch: int = 50_000) -> None:
    """Ingest `n_events` into the hot tier (tiers.hot.RedisHotTier): keys `key-<rank>` drawn from a
    Zipf(1) law over `n_keys`, times uniform in [start, start + span) (epoch ms), values 1..50."""
    from tiers.base import EVENT_SCHEMA

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_keys + 1, dtype=np.float64)
    cum = np.cumsum(weights) / weights.sum()
    for lo in range(0, n_events, batch):
        n = min(batch, n_events - lo)
        ranks = np.minimum(np.searchsorted(cum, rng.random(n)), n_keys - 1)
        events = pa.table({"stream": pa.array([stream] * n), "key": pa.array([f"key-{r}" for r in ranks]),
                           "ts": pa.array(start + rng.integers(0, span, n)),
                           "value": pa.array(rng.integers(1, 51, n).astype(np.float64)),
                           "id": pa.nulls(n, pa.string())}, schema=EVENT_SCHEMA)
        hot.ingest(tenant, events, now_ms=now)


def median_ms(fn, repeat: int) -> tuple[float, object, float]:
    """(median ms, last result, first-run ms) of fn() over `repeat` runs."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), out, times[0]


def settings_env(settings, **extra) -> dict[str, str]:
    """Environment variables (TIERSTORE_*) that give a `tierstore serve` child process the same
    Redis, PostgreSQL and cold folder as `settings` (an isolated() copy), plus `extra` settings."""
    env = {"TIERSTORE_REDIS_URL": settings.redis_url, "TIERSTORE_POSTGRES_URL": settings.postgres_url,
           "TIERSTORE_COLD_DIR": str(settings.cold_dir)}
    env.update({f"TIERSTORE_{k.upper()}": str(v) for k, v in extra.items()})
    return env


class Served:
    """`tierstore serve` in a child process (its own process group) on 127.0.0.1:`port`, with
    `env` added to this process's environment; a context manager that waits for /readyz on entry
    and stops the whole group (gunicorn master and workers) on exit."""

    def __init__(self, env: dict[str, str], port: int, *, workers: int = 1, threads: int = 2) -> None:
        self.env, self.port, self.workers, self.threads = env, port, workers, threads
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None

    def __enter__(self) -> "Served":
        import os
        import subprocess
        import sys

        import requests

        from tierstore.demo import _die_with_parent

        env = {**os.environ, "TIERSTORE_LOG_LEVEL": "WARNING", **self.env}
        self.proc = subprocess.Popen([sys.executable, "-m", "tierstore.cli", "serve", "--port", str(self.port),
                                      "--workers", str(self.workers), "--threads", str(self.threads)],
                                     env=env, start_new_session=True, preexec_fn=_die_with_parent)
        self.http = requests.Session()
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tierstore serve exited with {self.proc.returncode}")
            try:
                if self.http.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.__exit__(None, None, None)
        raise RuntimeError(f"the API at {self.url} did not become ready")

    def __exit__(self, *exc) -> None:
        from tierstore.demo import stop_group

        if self.proc is not None and self.proc.poll() is None:
            stop_group(self.proc)

    def get(self, path: str, **params) -> tuple[float, dict]:
        """(wall ms, JSON body) of GET path; raises RuntimeError on an error status."""
        t = time.perf_counter()
        r = self.http.get(self.url + path, params=params, timeout=600)
        ms = (time.perf_counter() - t) * 1000
        if r.status_code != 200:
            raise RuntimeError(f"GET {path} {params} -> {r.status_code}: {r.text[:400]}")
        return ms, r.json()

    def run_job(self, name: str, as_of: str = "now", timeout: float = 7200) -> dict:
        """Run job `name` through POST /v1/jobs/{name}/run and wait; returns the run's stats."""
        r = self.http.post(f"{self.url}/v1/jobs/{name}/run", json={"as_of": as_of}, timeout=60)
        if r.status_code >= 400:
            raise RuntimeError(f"job {name}: {r.status_code} {r.text[:300]}")
        run_id = r.json()["run_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            run = self.http.get(f"{self.url}/v1/jobs/runs/{run_id}", timeout=60).json()
            if run["status"] in ("done", "failed", "skipped"):
                if run["status"] != "done":
                    raise RuntimeError(f"job {name} ended {run['status']}: {run.get('error')}")
                return run.get("stats") or {}
            time.sleep(0.5)
        raise RuntimeError(f"job {name} did not finish in {timeout:.0f} s")
