"""Candidate layout for the hot tier's minute buckets (issue 11), measured before building it: one
ingest batch's minute writes as today (per bucket: ZMSCORE count and sum, ZADD count and sum, ZADD
LT min, ZADD GT max: tiers/hot_ingest.lua `update`) against one packed hash field per key per
minute ('count sum min max': HMGET + HSET). Shape of bench/ingest.py --values mixed: 60 minutes x
68 keys a batch (4,080 groups), buckets already holding 2,000 keys. Reports Redis CPU (INFO cpu,
main thread) per batch, which neighbours on a shared machine inflate little; scratch keys under
bench:minute_layout: are deleted afterwards.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... python -m bench.minute_layout [--rounds 3]
Last line: JSON {"zsets_ms_per_batch", "hash_ms_per_batch", "ratio"}.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics

import redis

PREFIX = "bench:minute_layout:"
MINUTES, PER_MINUTE, BUCKET_KEYS = 60, 68, 2000

ZSETS = """
local n = tonumber(ARGV[1])
local pos = 2
for b = 1, n do
  local zp = KEYS[1] .. 'z:' .. b .. ':'
  local m = tonumber(ARGV[pos]); pos = pos + 1
  local ks = {unpack(ARGV, pos, pos + m - 1)}; pos = pos + m
  local oc = redis.call('ZMSCORE', zp .. 'count', unpack(ks))
  local os = redis.call('ZMSCORE', zp .. 'sum', unpack(ks))
  local cs, ss, lo, hi = {}, {}, {}, {}
  for t = 1, m do
    local v = tonumber(ARGV[pos + t - 1])
    local c0, s0 = tonumber(oc[t] or 0), tonumber(os[t] or 0)
    cs[2*t-1], cs[2*t] = c0 + 1, ks[t]; ss[2*t-1], ss[2*t] = s0 + v, ks[t]
    lo[2*t-1], lo[2*t], hi[2*t-1], hi[2*t] = v, ks[t], v, ks[t]
  end
  pos = pos + m
  redis.call('ZADD', zp .. 'count', unpack(cs)); redis.call('ZADD', zp .. 'sum', unpack(ss))
  redis.call('ZADD', zp .. 'min', 'LT', unpack(lo)); redis.call('ZADD', zp .. 'max', 'GT', unpack(hi))
end
return 1
"""

HASH = """
local n = tonumber(ARGV[1])
local pos = 2
for b = 1, n do
  local h = KEYS[1] .. 'h:' .. b
  local m = tonumber(ARGV[pos]); pos = pos + 1
  local ks = {unpack(ARGV, pos, pos + m - 1)}; pos = pos + m
  local old = redis.call('HMGET', h, unpack(ks))
  local args = {}
  for t = 1, m do
    local v = tonumber(ARGV[pos + t - 1])
    local cnt, sm, mn, mx = 1, v, v, v
    if old[t] then
      local a, b2, c2, d = string.match(old[t], '^(%S+) (%S+) (%S+) (%S+)$')
      cnt, sm, mn, mx = tonumber(a) + 1, tonumber(b2) + v, math.min(tonumber(c2), v), math.max(tonumber(d), v)
    end
    args[2*t-1], args[2*t] = ks[t], string.format('%d %.17g %.17g %.17g', cnt, sm, mn, mx)
  end
  pos = pos + m
  redis.call('HSET', h, unpack(args))
end
return 1
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from tierstore.settings import load_settings

    c = redis.Redis.from_url(load_settings().redis_url)
    rnd = random.Random(1)
    keys = [f"k{i:06d}" for i in range(100_000)]
    zsets, hashes = c.register_script(ZSETS), c.register_script(HASH)
    try:
        pipe = c.pipeline(transaction=False)
        for b in range(1, MINUTES + 1):
            members = rnd.sample(keys, BUCKET_KEYS)
            for agg in ("count", "sum", "min", "max"):
                pipe.zadd(f"{PREFIX}z:{b}:{agg}", {k: 1 for k in members})
            pipe.hset(f"{PREFIX}h:{b}", mapping={k: "1 1 1 1" for k in members})
        pipe.execute()
        batches = []
        for _ in range(20):
            argv_ = [MINUTES]
            for _ in range(MINUTES):
                ks = rnd.sample(keys[:20_000], PER_MINUTE)
                argv_ += [PER_MINUTE, *ks, *(rnd.choice([0.5, 1.0, 2.0, 5.0]) for _ in ks)]
            batches.append(argv_)

        def cpu() -> float:
            info = c.info("cpu")
            return info["used_cpu_user_main_thread"] + info["used_cpu_sys_main_thread"]

        spent: dict[str, list[float]] = {"zsets": [], "hash": []}
        for _ in range(args.rounds):
            for name, script in (("zsets", zsets), ("hash", hashes)):
                c0 = cpu()
                for a in batches * 3:
                    script(keys=[PREFIX], args=a)
                spent[name].append((cpu() - c0) / (3 * len(batches)) * 1e3)
                print(f"{name}: {spent[name][-1]:.1f} ms Redis CPU per batch", flush=True)
    finally:
        for key in c.scan_iter(match=PREFIX + "*", count=1000):
            c.delete(key)
    z, h = statistics.median(spent["zsets"]), statistics.median(spent["hash"])
    print(json.dumps({"zsets_ms_per_batch": round(z, 1), "hash_ms_per_batch": round(h, 1), "ratio": round(z / h, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
