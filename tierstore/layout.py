"""Where local services live: one home directory and one port base per instance.

Every port is derived from TIERSTORE_PORT_BASE so two instances run side by side.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT_BASE = 17400

# offsets from the port base
REDIS_OFFSET = 0
POSTGRES_OFFSET = 1
TRINO_OFFSET = 2
S3_OFFSET = 3
API_OFFSET = 10
# Trino workers (setting trino_workers): worker i (1-based) on port_base + TRINO_WORKER_OFFSET + i - 1
TRINO_WORKER_OFFSET = 12
TRINO_MAX_WORKERS = 8

S3_ACCESS_KEY = "tierstore"
S3_SECRET_KEY = "tierstore-secret"
S3_BUCKET = "tierstore"
S3_REGION = "us-east-1"
PG_USER = "tierstore"
PG_DATABASE = "tierstore"


@dataclass(frozen=True)
class InstanceLayout:
    """Where one local instance's services live: its home folder and its ports (port_base + n).
    (The Parquet files' layout is tiers.parquet_layout.Layout.)"""

    home: Path
    port_base: int

    @classmethod
    def from_env(cls) -> "InstanceLayout":
        home = Path(os.environ.get("TIERSTORE_HOME", ".tierstore")).resolve()
        base = int(os.environ.get("TIERSTORE_PORT_BASE", DEFAULT_PORT_BASE))
        return cls(home=home, port_base=base)

    @property
    def redis_port(self) -> int:
        return self.port_base + REDIS_OFFSET

    @property
    def postgres_port(self) -> int:
        return self.port_base + POSTGRES_OFFSET

    @property
    def trino_port(self) -> int:
        return self.port_base + TRINO_OFFSET

    def trino_worker_port(self, index: int) -> int:
        """HTTP port of Trino worker `index` (1-based, at most TRINO_MAX_WORKERS)."""
        if not 1 <= index <= TRINO_MAX_WORKERS:
            raise ValueError(f"Trino worker index must be 1..{TRINO_MAX_WORKERS}, not {index}")
        return self.port_base + TRINO_WORKER_OFFSET + index - 1

    @property
    def s3_port(self) -> int:
        return self.port_base + S3_OFFSET

    @property
    def api_port(self) -> int:
        return self.port_base + API_OFFSET

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def postgres_url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.postgres_port}/{PG_DATABASE}"

    @property
    def trino_url(self) -> str:
        return f"http://127.0.0.1:{self.trino_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def cold_dir(self) -> Path:
        """Root of the cold tier's Parquet files (Trino's local file system root)."""
        return self.home / "cold"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"
