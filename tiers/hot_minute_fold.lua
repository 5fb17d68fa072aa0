-- Minute buckets' pending writes (prepended, after hot_alltime_fold.lua, to hot_ingest.lua,
-- hot_query.lua, hot_compact.lua and hot_delete.lua; tiers/hot.py explains the layout).
-- Ingest does not update a minute bucket's zsets (count, sum, min, max: a ZMSCORE and up to four
-- ZADDs per key a batch) but one hash per bucket, <g>:<start>:h, field = key, value = 'count sum
-- min max' of the key's events since the last fold (one HMGET and one HSET per bucket a batch),
-- with the bucket's expiry, and lists the bucket in <prefix>1m:pend. fold_minutes merges each
-- listed hash into its bucket's zsets exactly as ingest wrote them before (update below: sparse
-- min and max, no sum zset while every sum is its count) and deletes it, atomically: every reader
-- of minute zsets (hot_query.lua, every mode; hot_compact.lua before folding minutes into hours;
-- hot_delete.lua) folds first, so answers, window unions and lost-bucket detection see every
-- event once. Totals, the index and the window unions are still written by ingest itself.
local MCHUNK = 3000

-- A bucket's zsets += the n members A[k0 ..]. The min and max zsets hold only the keys counted more
-- than once in the bucket (a key counted once has min = max = its sum: most keys of a minute). The
-- sum zset is kept only once some key's sum differs from its count (counting streams send value
-- 1: their sum is their count). single: each member was seen once in the batch, value A[v0 + i];
-- else counts A[c0 + i], sums A[s0 + i], mins A[lo0 + i], maxs A[hi0 + i]. same: the batch's sums
-- are its counts (no values or sums in A); sums: write the sum zset; const: every value the bucket
-- ever had, and every value of the batch, is one same value (a key counted more than once keeps
-- its min and max: they need no update).
local function update(zp, A, k0, n, single, same, sums, const, v0, c0, s0, lo0, hi0)
  for i = 0, n - 1, MCHUNK do
    local m = math.min(MCHUNK, n - i)
    local old_c = redis.call('ZMSCORE', zp .. 'count', unpack(A, k0 + i, k0 + i + m - 1))
    local old_s = sums and redis.call('ZMSCORE', zp .. 'sum', unpack(A, k0 + i, k0 + i + m - 1)) or old_c
    local cs, ss, lo, hi, nb = {}, {}, {}, {}, 0
    for t = 1, m do
      local j = i + t - 1
      local key = A[k0 + j]
      local c, s, mn, mx
      if single then
        c = '1'
        s = same and c or A[v0 + j]
        mn, mx = s, s
      else
        c, mn, mx = A[c0 + j], A[lo0 + j], A[hi0 + j]
        s = same and c or A[s0 + j]
      end
      local oc = old_c[t]
      if oc then
        oc = tonumber(oc)
        local os = tonumber(old_s[t])
        if oc == 1 then  -- counted once so far: its min and max were its sum
          mn, mx = math.min(os, tonumber(mn)), math.max(os, tonumber(mx))
        end
        c, s = oc + tonumber(c), os + tonumber(s)
      end
      if (oc and not (const and oc > 1)) or (not oc and not single) then
        nb = nb + 1
        lo[2 * nb - 1], lo[2 * nb], hi[2 * nb - 1], hi[2 * nb] = mn, key, mx, key
      end
      cs[2 * t - 1], cs[2 * t], ss[2 * t - 1], ss[2 * t] = c, key, s, key
    end
    redis.call('ZADD', zp .. 'count', unpack(cs, 1, 2 * m))
    if sums then redis.call('ZADD', zp .. 'sum', unpack(ss, 1, 2 * m)) end
    if nb > 0 then
      redis.call('ZADD', zp .. 'min', 'LT', unpack(lo, 1, 2 * nb))
      redis.call('ZADD', zp .. 'max', 'GT', unpack(hi, 1, 2 * nb))
    end
  end
end

-- Whether the sum zset `sum` must be written for a batch: it exists, or the batch breaks "every
-- sum is its count" (then it is made from the counts so far, `count`, first).
local function need_sums(sum, count, same)
  if redis.call('EXISTS', sum) == 1 then return true end
  if same then return false end
  if redis.call('EXISTS', count) == 1 then redis.call('ZUNIONSTORE', sum, 1, count) end
  return true
end

-- Ingest: a minute section (hot_ingest.lua write_bucket's layout at A: keys from k0, n1 singles
-- with values at v0 unless same, nm others with counts c0, sums s0 unless same, mins lo0, maxs
-- hi0) added into the bucket's pending hash, expiring at exp; the bucket listed in 1m:pend.
local function pend_minute(p, zp, start, A, k0, n1, nm, same, v0, c0, s0, lo0, hi0, exp)
  local h = zp .. 'h'
  local n = n1 + nm
  for i = 0, n - 1, MCHUNK do
    local m = math.min(MCHUNK, n - i)
    local old = redis.call('HMGET', h, unpack(A, k0 + i, k0 + i + m - 1))
    local args = {}
    for t = 1, m do
      local j = i + t - 1
      local c, s, mn, mx
      if j < n1 then
        c = 1
        s = same and 1 or tonumber(A[v0 + j])
        mn, mx = s, s
      else
        local q = j - n1
        c = tonumber(A[c0 + q])
        s = same and c or tonumber(A[s0 + q])
        mn, mx = tonumber(A[lo0 + q]), tonumber(A[hi0 + q])
      end
      local o = old[t]
      if o then
        local oc, os, omn, omx = string.match(o, '^(%S+) (%S+) (%S+) (%S+)$')
        c, s = tonumber(oc) + c, tonumber(os) + s
        mn, mx = math.min(tonumber(omn), mn), math.max(tonumber(omx), mx)
      end
      args[2 * t - 1] = A[k0 + j]
      args[2 * t] = string.format('%.17g %.17g %.17g %.17g', c, s, mn, mx)
    end
    redis.call('HSET', h, unpack(args, 1, 2 * m))
  end
  redis.call('PEXPIREAT', h, exp)
  redis.call('ZADD', p .. '1m:pend', start, start)
end

-- Fold every pending minute hash of the stream (prefix p) into its bucket's zsets. A hash the
-- safety TTL deleted is skipped: its bucket's zsets expired with it (one expiry), and readers
-- report the bucket lost. Returns how many buckets were listed.
local function fold_minutes(p)
  local pend = p .. '1m:pend'
  local starts = redis.call('ZRANGE', pend, 0, -1)
  if #starts == 0 then return 0 end
  redis.call('DEL', pend)
  for _, start in ipairs(starts) do
    local zp = p .. '1m:' .. start .. ':'
    local h = zp .. 'h'
    local flat = redis.call('HGETALL', h)
    if #flat > 0 then
      local exp = redis.call('PEXPIRETIME', h)
      local sk, sv, mk, mc, ms_, mlo, mhi = {}, {}, {}, {}, {}, {}, {}
      local same = true
      for i = 1, #flat, 2 do
        local c, s, mn, mx = string.match(flat[i + 1], '^(%S+) (%S+) (%S+) (%S+)$')
        c, s = tonumber(c), tonumber(s)
        if c ~= s then same = false end
        if c == 1 then
          sk[#sk + 1], sv[#sv + 1] = flat[i], s
        else
          local k = #mk + 1
          mk[k], mc[k], ms_[k], mlo[k], mhi[k] = flat[i], c, s, tonumber(mn), tonumber(mx)
        end
      end
      local A = {}
      local n1, nm = #sk, #mk
      for i = 1, n1 do A[i] = sk[i] end
      for i = 1, nm do A[n1 + i] = mk[i] end
      local v0 = n1 + nm + 1
      if not same then for i = 1, n1 do A[v0 + i - 1] = sv[i] end end
      local c0 = v0 + (same and 0 or n1)
      for i = 1, nm do A[c0 + i - 1] = mc[i] end
      local s0 = c0 + nm
      if not same then for i = 1, nm do A[s0 + i - 1] = ms_[i] end end
      local lo0 = s0 + (same and 0 or nm)
      for i = 1, nm do A[lo0 + i - 1] = mlo[i] end
      local hi0 = lo0 + nm
      for i = 1, nm do A[hi0 + i - 1] = mhi[i] end
      -- every value the bucket ever had was one value (its totals, which hold them all)
      local tp = p .. '1m:total:'
      local lo, hi = redis.call('ZSCORE', tp .. 'min', start), redis.call('ZSCORE', tp .. 'max', start)
      local const = lo and hi and tonumber(lo) == tonumber(hi) or false
      local sums = need_sums(zp .. 'sum', zp .. 'count', same)
      update(zp, A, 1, n1, true, same, sums, const, v0)
      update(zp, A, 1 + n1, nm, false, same, sums, const, nil, c0, s0, lo0, hi0)
      redis.call('DEL', h)
      if exp > 0 then
        for _, agg in ipairs({'count', 'sum', 'min', 'max'}) do redis.call('PEXPIREAT', zp .. agg, exp) end
      end
    end
  end
  return #starts
end

