"""One way to turn driver errors into `TierUnavailable(tier)`, and to retry the transient ones.

`translate(tier)` wraps a tier's call: an error of a service the tier depends on (PostgreSQL,
Redis, S3, DuckDB's file I/O, Trino's HTTP) becomes `TierUnavailable(tier)` (503, naming the
tier); a TierstoreError passes unchanged; anything else (a bug, a bad argument) propagates.
`tier_read` / `tier_call` are the method decorators the tiers use: reads are idempotent, so
`tier_read` also retries transient errors (connection refused or reset, pool timeout) a few
times with short waits, logged; writes are never retried here.
"""
from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import psycopg
import redis
from psycopg_pool import PoolTimeout
from tenacity import (before_sleep_log, retry, retry_if_exception, stop_after_attempt, stop_after_delay,
                      wait_exponential)

from rollups.errors import TierstoreError, TierUnavailable

log = logging.getLogger("tierstore.tiers")

F = TypeVar("F", bound=Callable)

RETRY_ATTEMPTS = 3
RETRY_BUDGET_S = 1.0  # no retry starts later than this after the first attempt (a pool timeout is long)


def _botocore_down(exc: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, BotoCoreError):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status == 0
    return False


def _duckdb_down(exc: BaseException) -> bool:
    import duckdb

    return isinstance(exc, (duckdb.IOException, duckdb.HTTPException))


def _trino_down(exc: BaseException) -> bool:
    module = type(exc).__module__
    if module.startswith(("requests", "urllib3")):
        return True
    if module.startswith("trino"):
        from trino.exceptions import HttpError, TrinoExternalError, TrinoUserError

        return isinstance(exc, (HttpError, TrinoExternalError)) and not isinstance(exc, TrinoUserError)
    return False


def _redis_busy(exc: BaseException) -> bool:
    """Redis answers but cannot serve now: BUSY (a script outlived the client's timeout and still
    runs), a cluster that is down or resharding (CLUSTERDOWN, TRYAGAIN, MASTERDOWN)."""
    if isinstance(exc, (redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError)):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(("BUSY", "MASTERDOWN", "CLUSTERDOWN"))


def is_service_down(exc: BaseException) -> bool:
    """Whether `exc` says a service behind a tier cannot answer (not a bug or a bad request)."""
    if isinstance(exc, (psycopg.Error, PoolTimeout, redis.ConnectionError, redis.TimeoutError, OSError)):
        return True
    return _redis_busy(exc) or _botocore_down(exc) or _duckdb_down(exc) or _trino_down(exc)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying at once: the connection was refused, reset or timed out in the pool."""
    return isinstance(exc, (psycopg.OperationalError, PoolTimeout, redis.ConnectionError,
                            ConnectionRefusedError, ConnectionResetError))


@contextmanager
def translate(tier: str, prefix: str | None = None) -> Iterator[None]:
    """Raise TierUnavailable(tier) from a service error inside the block, its message
    "<prefix>: <error>" (no prefix: "The <tier> tier is unavailable."); TierstoreErrors and
    other errors pass unchanged."""
    try:
        yield
    except TierstoreError:
        raise
    except Exception as exc:
        if not is_service_down(exc):
            raise
        log.warning("%s tier unavailable: %s", tier, _first_line(exc))
        raise TierUnavailable(tier, prefix and f"{prefix}: {_first_line(exc)}") from exc


retrying = retry(retry=retry_if_exception(is_transient),
                 stop=stop_after_attempt(RETRY_ATTEMPTS) | stop_after_delay(RETRY_BUDGET_S),
                 wait=wait_exponential(multiplier=0.05, max=0.4),
                 before_sleep=before_sleep_log(log, logging.WARNING), reraise=True)
"""Retry a callable on transient errors only (idempotent reads; never non-idempotent writes)."""


def tier_call(method: F) -> F:
    """Method decorator: driver errors become TierUnavailable(self.name). For writes."""
    return _at_boundary(method, method)


def tier_read(method: F) -> F:
    """Method decorator for idempotent reads: transient errors retried, then translated."""
    return _at_boundary(method, retrying(method))


def _at_boundary(method: F, call: Callable) -> F:
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with translate(self.name):
            return call(self, *args, **kwargs)
    return wrapper  # type: ignore[return-value]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = ["is_service_down", "is_transient", "retrying", "tier_call", "tier_read", "translate"]
