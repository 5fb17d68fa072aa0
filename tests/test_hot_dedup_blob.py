"""A batch's id digests travel to hot_ingest.lua as one concatenated argument (tiers/hot_batch.py
`_encode_ids`), cut into 16-byte digests there: digests holding or ending in NUL bytes, several
chunks of them (over the script's CHUNK) and a duplicate at any position are found exactly."""
from __future__ import annotations

from itertools import count

import pytest
import redis

from rollups.timeutil import DAY_MS, MAX_MS, MIN_MS, MINUTE_MS, TimeRange, now_ms
from tests.api_support import redis_db_url
from tests.tier_contract import STREAM, events_of, new_tenant
from tiers.hot import IngestResult, RedisHotTier
from tiers.hot_dedup import digest

REDIS_DB = 86
WINDOW = 60_000  # ms


@pytest.fixture(scope="module")
def url(settings):
    return redis_db_url(settings, "hot_dedup_blob", REDIS_DB)


@pytest.fixture
def hot(url):
    tier = RedisHotTier.from_url(url, DAY_MS, MINUTE_MS, WINDOW)
    yield tier
    tier.close()


def nul_ids(n: int) -> list[str]:
    """n ids whose digests end in a NUL byte (what numpy's S16 or a C string would cut off)."""
    out = []
    for i in count():
        if digest(f"nul-{i}").endswith(b"\x00"):
            out.append(f"nul-{i}")
            if len(out) == n:
                return out


def test_digests_ending_in_nul_are_stored_whole_and_found(hot, url):
    tenant = new_tenant()
    now = now_ms()
    ids = nul_ids(3)
    assert hot.ingest(tenant, events_of([("k", now - 1000, 1.0, x) for x in ids]), now_ms=now) == IngestResult(3, 0)
    client = redis.Redis.from_url(url)
    (key,) = client.keys(f"tierstore:hot:{{{tenant}:{STREAM}}}:dd:*".replace("{", "\\{").replace("}", "\\}"))
    assert client.smembers(key) == {digest(x) for x in ids}
    again = events_of([("k", now - 900, 1.0, "fresh"), ("k", now - 900, 1.0, ids[1])])
    assert hot.ingest(tenant, again, now_ms=now_ms()) == IngestResult(1, 1)
    hot.delete_range(tenant, None, TimeRange(MIN_MS, MAX_MS))


def test_a_duplicate_in_any_chunk_of_a_large_batch_is_found(hot):
    """7,000 ids (three of the script's 3,000-digest chunks): the earlier batch's ids sit at the
    start, the middle and the end of the next one; exactly those are duplicates."""
    tenant = new_tenant()
    now = now_ms()
    first = [f"a-{i}" for i in range(3)]
    assert hot.ingest(tenant, events_of([("k", now - 2000, 1.0, x) for x in first]), now_ms=now) == \
        IngestResult(3, 0)
    ids = [f"b-{i}" for i in range(7000)]
    ids[0], ids[3500], ids[6999] = first
    rows = [(f"k{i % 50}", now - 1000 - i % 1000, 1.0, x) for i, x in enumerate(ids)]
    assert hot.ingest(tenant, events_of(rows), now_ms=now_ms()) == IngestResult(6997, 3)
    assert hot.ingest(tenant, events_of(rows[1:2] + rows[6000:6001]), now_ms=now_ms()) == IngestResult(0, 2)
    hot.delete_range(tenant, None, TimeRange(MIN_MS, MAX_MS))
