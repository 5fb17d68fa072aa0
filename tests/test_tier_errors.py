"""tiers/errors.py: which driver errors become TierUnavailable, and that only transient ones are
retried, only on reads, and logged."""
from __future__ import annotations

import logging

import psycopg
import pytest

from rollups.errors import TierUnavailable
from tiers.errors import RETRY_ATTEMPTS, tier_call, tier_read, translate


class Flaky:
    """Fails with `error` on the first `failures` calls of each method."""

    name = "warm"

    def __init__(self, error: Exception, failures: int):
        self.error, self.failures, self.calls = error, failures, 0

    def _once(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "answer"

    @tier_read
    def read(self):
        return self._once()

    @tier_call
    def write(self):
        return self._once()


def test_a_transient_read_error_is_retried_and_logged(caplog):
    tier = Flaky(ConnectionRefusedError("refused"), RETRY_ATTEMPTS - 1)
    with caplog.at_level(logging.WARNING, logger="tierstore.tiers"):
        assert tier.read() == "answer"
    assert tier.calls == RETRY_ATTEMPTS
    assert sum("Retrying" in r.getMessage() for r in caplog.records) == RETRY_ATTEMPTS - 1


def test_a_read_failing_every_attempt_is_tier_unavailable_naming_the_tier():
    tier = Flaky(psycopg.OperationalError("connection refused"), 99)
    with pytest.raises(TierUnavailable) as err:
        tier.read()
    assert err.value.tier == "warm" and tier.calls == RETRY_ATTEMPTS


def test_writes_are_never_retried():
    tier = Flaky(ConnectionResetError("reset"), 1)
    with pytest.raises(TierUnavailable):
        tier.write()
    assert tier.calls == 1


def test_errors_that_are_not_the_service_pass_unchanged_and_unretried():
    tier = Flaky(ValueError("by must be count or sum"), 1)
    with pytest.raises(ValueError):
        tier.read()
    assert tier.calls == 1
    with pytest.raises(KeyError), translate("cold"):
        raise KeyError("a bug")


def test_a_server_side_s3_error_is_unavailable_and_a_client_one_is_not():
    from botocore.exceptions import ClientError

    def client_error(status: int) -> ClientError:
        return ClientError({"Error": {"Code": str(status)}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    with pytest.raises(TierUnavailable) as err, translate("archive"):
        raise client_error(503)
    assert err.value.tier == "archive"
    with pytest.raises(ClientError), translate("archive"):
        raise client_error(403)


def test_redis_busy_running_a_script_is_unavailable_not_a_bug(redis_client):
    """A script that outlived its client's timeout keeps Redis BUSY for everyone else: that is the
    hot tier being unavailable (503), not an internal error (a real Redis, a real long script)."""
    import threading
    import time

    import redis

    old = redis_client.config_get("busy-reply-threshold")["busy-reply-threshold"]
    redis_client.config_set("busy-reply-threshold", 100)
    spin = threading.Thread(target=lambda: redis.Redis(**redis_client.connection_pool.connection_kwargs).eval(
        "local t = redis.call('TIME') local s = t[1] * 1e6 + t[2] "
        "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - s > 1500000 return 1", 0))
    try:
        spin.start()
        time.sleep(0.4)
        with pytest.raises(TierUnavailable) as err:
            with translate("hot"):
                redis.Redis(**redis_client.connection_pool.connection_kwargs).get("any")
        assert err.value.tier == "hot" and isinstance(err.value.__cause__, redis.ResponseError)
        with pytest.raises(ValueError):  # a bug still passes unchanged
            with translate("hot"):
                raise ValueError("bug")
    finally:
        spin.join()
        redis_client.config_set("busy-reply-threshold", old)
