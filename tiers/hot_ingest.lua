-- One ingest batch of the hot tier, atomically: seal check, dedup, log append, aggregates.
-- Called by tiers/hot.py (`_Batch.encode` builds ARGV; its docstring is the layout), after
-- hot_alltime_fold.lua (the all-time leaderboards' pending increments).
-- KEYS[1] the stream's event log, KEYS[2] its seal mark copy, KEYS[3] its hot floor mark copy
-- (tiers/eventlog.py: all in the stream's hash tag, so the script is single-slot on Redis Cluster).
-- Bucket, total, mark and dedup keys are derived from the stream prefix in ARGV (one stream a call:
-- Python splits a batch spanning streams). No seal copy: the log is not registered yet (answer
-- 'unregistered'; Python registers it, then calls again).
--
-- Minute buckets take every event. An hour or day bucket holds its own zsets only for
-- [start, folded) — its 'folded' mark, raised by hot_compact.lua as it folds finer buckets in — so
-- an event goes there too only when its ts is below that mark. Python pre-aggregated against the
-- marks it expected; when one has moved, nothing is written and the marks are returned.
--
-- Expiry (tiers/hot_expiry.py): every key of a bucket (its zsets, its folded mark) gets one same
-- expiry, max(bucket end, now) + the safety TTL, at every write touching the bucket. The index and
-- totals never expire (expire_hot trims them with the buckets). A bucket found in the index without
-- its keys was lost to the safety TTL: it goes to the stream's 'lost' zset before it is rewritten.
-- Returns {'ok', duplicates, floor, score, rank} | {'sealed', seal} | {'floor', floor} | {'unregistered'}
--       | {'folded', {stream index, granularity, start, mark, ...}}
--       | {'dups', {stream index, 0-based position of the digest in its section, ...}}.
local CHUNK = 3000
local DEDUP_SLICES = 4  -- tiers/hot_dedup.py SLICES
local NO_MARK = '-1e300'
local AGGS = {'count', 'sum', 'min', 'max'}
local GRANS = {{'1m', 60000}, {'1h', 3600000}, {'1d', 86400000}}
local WIDTH = {['1m'] = 60000, ['1h'] = 3600000, ['1d'] = 86400000}

local pos = 1
local function take()
  pos = pos + 1
  return ARGV[pos - 1]
end

local mode = take()
local tenant = take()
local now = tonumber(take())
local expected_floor = tonumber(take())
local plain_min_ts = tonumber(take())
local batch_min_ts = tonumber(take())
local dedup_px = take()
local safety_ttl = tonumber(take())
local log_data = take()
local rank_stream = tonumber(take())
local rank_member = take()

local names, prefixes = {}, {}
for i = 1, tonumber(take()) do
  names[i] = take()
  prefixes[i] = take()
end

local floor_raw = NO_MARK
if mode == 'ingest' then
  local seal = redis.call('GET', KEYS[2])
  if not seal then
    return {'unregistered'}
  end
  if batch_min_ts < tonumber(seal) then
    return {'sealed', seal}
  end
  floor_raw = redis.call('GET', KEYS[3]) or NO_MARK
  local floor = tonumber(floor_raw)
  -- Python pre-aggregated the id-less events against expected_floor: redo if that chose differently.
  if floor ~= expected_floor and (floor > plain_min_ts or expected_floor > plain_min_ts) then
    return {'floor', floor_raw}
  end
end
local floor = tonumber(floor_raw)

-- The folded marks of every live hour and day bucket the batch touches, as Python expected them.
local marks = {}
local moved = {}
for _ = 1, tonumber(take()) do
  local s, g, start, expected = tonumber(take()), take(), take(), take()
  local zp = prefixes[s] .. g .. ':' .. start .. ':'
  local mark = redis.call('GET', zp .. 'folded') or start
  marks[zp] = tonumber(mark)
  if marks[zp] ~= tonumber(expected) then
    moved[#moved + 1] = s
    moved[#moved + 1] = g
    moved[#moved + 1] = start
    moved[#moved + 1] = mark
  end
end
if #moved > 0 then
  return {'folded', moved}
end

-- A bucket's zsets += the n members A[k0 ..]. The min and max zsets hold only the keys counted more
-- than once in the bucket (a key counted once has min = max = its sum: most keys of a minute). The
-- sum zset is kept only once some key's sum differs from its count (counting streams send value
-- 1: their sum is their count). single: each member was seen once in the batch, value A[v0 + i];
-- else counts A[c0 + i], sums A[s0 + i], mins A[lo0 + i], maxs A[hi0 + i]. same: the batch's sums
-- are its counts (no values or sums in A); sums: write the sum zset; const: every value the bucket
-- ever had, and every value of the batch, is one same value (a key counted more than once keeps
-- its min and max: they need no update); bound: max |value| of the bucket so far (its totals'
-- min and max), or nil.
-- A key counted more than once keeps its min and max in their zsets; its mean (old sum / old count)
-- lies between them, so a batch minimum above the mean cannot lower its min, nor a batch maximum
-- below it raise its max: that ZADD is skipped (about half of them for mixed values). The stored
-- sum may differ from the exact sum of the values by float rounding: at most oc x eps x oc x bound
-- (each of at most oc additions rounds by eps x |partial sum| <= eps x oc x bound), so the test
-- keeps a margin of (oc + 2) x bound x 4.5e-16 (> 2 eps) on the mean, and without a bound no skip.
-- pair: the bucket's sums are pairs (hot_pairs.lua): old low parts from its sumc zset, the
-- others' low parts A[l0 + i] (l0 nil: 0); each new sum is the normalised pair sum.
local function update(zp, A, k0, n, single, same, sums, const, bound, v0, c0, s0, lo0, hi0, pair, l0)
  local maxlo = 0
  for i = 0, n - 1, CHUNK do
    local m = math.min(CHUNK, n - i)
    local old_c = redis.call('ZMSCORE', zp .. 'count', unpack(A, k0 + i, k0 + i + m - 1))
    -- the sum zset has exactly the count zset's members (a key it lacks reads nil in both)
    local old_s = old_c
    local old_l = {}
    if sums then
      old_s = redis.call('ZMSCORE', zp .. 'sum', unpack(A, k0 + i, k0 + i + m - 1))
      if pair then
        old_l = redis.call('ZMSCORE', zp .. 'sumc', unpack(A, k0 + i, k0 + i + m - 1))
      end
    end
    local cs, ss, lo, hi, nlo, nhi = {}, {}, {}, {}, 0, 0
    local cl, ncl = {}, 0
    for t = 1, m do
      local j = i + t - 1
      local key = A[k0 + j]
      local c, s, mn, mx
      local sl = 0
      if single then
        c = '1'
        s = same and c or A[v0 + j]
        mn, mx = s, s
      else
        c, mn, mx = A[c0 + j], A[lo0 + j], A[hi0 + j]
        s = same and c or A[s0 + j]
        if l0 then sl = tonumber(A[l0 + j]) end
      end
      local oc = old_c[t]
      local write_lo, write_hi = not oc and not single, not oc and not single
      if oc then
        oc = tonumber(oc)
        local os = tonumber(old_s[t])
        if oc == 1 then  -- counted once so far: its min and max were its sum (enters min and max now)
          mn, mx = math.min(os, tonumber(mn)), math.max(os, tonumber(mx))
          write_lo, write_hi = true, true
        elseif not const then
          write_lo, write_hi = true, true
          if bound then
            local mean, margin = os / oc, (oc + 2) * bound * 4.5e-16
            write_lo, write_hi = not (tonumber(mn) > mean + margin), not (tonumber(mx) < mean - margin)
          end
        end
        c = oc + tonumber(c)
        if pair then
          local ol = tonumber(old_l[t] or 0)
          s, sl = pair_add(os, ol, tonumber(s), sl)
          if ol ~= 0 and sl == 0 then
            ncl = ncl + 1
            cl[2 * ncl - 1], cl[2 * ncl] = 0, key
          end
        else
          s = os + tonumber(s)
        end
      end
      if pair and sl ~= 0 then
        ncl = ncl + 1
        cl[2 * ncl - 1], cl[2 * ncl] = sl, key
        if math.abs(sl) > maxlo then maxlo = math.abs(sl) end
      end
      if write_lo then
        nlo = nlo + 1
        lo[2 * nlo - 1], lo[2 * nlo] = mn, key
      end
      if write_hi then
        nhi = nhi + 1
        hi[2 * nhi - 1], hi[2 * nhi] = mx, key
      end
      cs[2 * t - 1], cs[2 * t], ss[2 * t - 1], ss[2 * t] = c, key, s, key
    end
    redis.call('ZADD', zp .. 'count', unpack(cs, 1, 2 * m))
    if sums then redis.call('ZADD', zp .. 'sum', unpack(ss, 1, 2 * m)) end
    if nlo > 0 then redis.call('ZADD', zp .. 'min', 'LT', unpack(lo, 1, 2 * nlo)) end
    if nhi > 0 then redis.call('ZADD', zp .. 'max', 'GT', unpack(hi, 1, 2 * nhi)) end
    if ncl > 0 then redis.call('ZADD', zp .. 'sumc', unpack(cl, 1, 2 * ncl)) end
  end
  if pair and maxlo > 0 then redis.call('ZADD', zp .. 'sumc', 'GT', maxlo, PAIR_MARK) end
end

-- Whether the sum zset `sum` must be written for a batch: it exists, or the batch breaks "every
-- sum is its count" (then it is made from the counts so far, `count`, first).
local function need_sums(sum, count, same)
  if redis.call('EXISTS', sum) == 1 then return true end
  if same then return false end
  if redis.call('EXISTS', count) == 1 then redis.call('ZUNIONSTORE', sum, 1, count) end
  return true
end

-- The materialised unions of runs of buckets holding bucket (g, start) (hot_window.lua) take the
-- section's keys, and their versions its total count tc, here: a union and its version change
-- together or not at all. Only minute and hour sections come here, and only those listing keys:
-- an hour lists every event's key exactly when it is folded whole (the only hours a union holds).
-- delta(i): the i-th key's increment (0-based).
local function window_apply(prefix, g, start, A, k0, n, tc, delta_of, pair)
  local index = prefix .. 'win:index'
  local t = tonumber(start)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', start)) do
    local mg, _, mb, agg = string.match(member, '^([^:]+):([^:]+):([^:]+):([^:]+)$')
    if mg == g and t < tonumber(mb) then
      local key = prefix .. 'win:' .. member
      if redis.call('EXISTS', key .. ':v') == 0 or (pair and agg == 'sum') then
        -- a union of sums holds no pair (hot_window.lua builds none over inexact buckets): gone
        redis.call('DEL', key, key .. ':v')
        redis.call('ZREM', index, member)
      else
        local delta = delta_of(agg)
        for i = 0, n - 1, CHUNK do
          local m = math.min(CHUNK, n - i)
          local old = redis.call('ZMSCORE', key, unpack(A, k0 + i, k0 + i + m - 1))
          local args = {}
          for j = 1, m do
            local d = delta(i + j - 1)
            if old[j] then d = tonumber(old[j]) + tonumber(d) end
            args[2 * j - 1], args[2 * j] = d, A[k0 + i + j - 1]
          end
          redis.call('ZADD', key, unpack(args, 1, 2 * m))
        end
        redis.call('INCRBY', key .. ':v', tc)
      end
    end
  end
end

-- The bucket's total sum (tp .. 'sum', member start) += the pair (hi, lo), exactly: its low part
-- in tp .. 'sumc' (hot_pairs.lua). Per section, not per key: always as a pair.
local function total_add(tp, start, hi, lo)
  local oh = tonumber(redis.call('ZSCORE', tp .. 'sum', start) or 0)
  local ol = tonumber(redis.call('ZSCORE', tp .. 'sumc', start) or 0)
  local h, l = pair_add(oh, ol, tonumber(hi), tonumber(lo))
  redis.call('ZADD', tp .. 'sum', h, start)
  if l ~= 0 then
    redis.call('ZADD', tp .. 'sumc', l, start)
  elseif ol ~= 0 then
    redis.call('ZREM', tp .. 'sumc', start)
  end
end

-- Index and totals of each touched (stream, granularity): they never expire (made persistent at
-- the end, for keys written by a version that gave them a TTL).
local touched = {}

-- One bucket section at A[at]: stream index, granularity, start, same (1: every key's sum in the
-- section is its count), n1 (keys seen once in the batch), nm (the others), the bucket's totals
-- (count, sum, min, max), the total sum's low part, flags (1: low parts of the nm sums follow;
-- 2: some sum is off hot_sums.GRID), then the n1 + nm keys, n1 values (unless same), nm counts,
-- nm sums (unless same), nm mins, nm maxs and (flag 1) nm low parts. Returns the position after
-- the section.
local function write_bucket(A, at)
  local s, g, start, same = tonumber(A[at]), A[at + 1], A[at + 2], tonumber(A[at + 3]) == 1
  local n1, nm = tonumber(A[at + 4]), tonumber(A[at + 5])
  local flags = tonumber(A[at + 11])
  local k0 = at + 12
  local v0 = k0 + n1 + nm
  local c0 = v0 + (same and 0 or n1)
  local s0 = c0 + nm
  local lo0 = s0 + (same and 0 or nm)
  local hi0 = lo0 + nm
  local l0 = flags % 2 == 1 and hi0 + nm or nil
  local gp = prefixes[s] .. g .. ':'
  local zp = gp .. start .. ':'
  local exp = math.max(tonumber(start) + WIDTH[g], now) + safety_ttl
  local tp = gp .. 'total:'
  -- the bucket's keys are gone although the index lists it: the safety TTL fired
  local fresh
  if g == '1m' then
    fresh = redis.call('EXISTS', zp .. 'count') == 0
  else
    fresh = redis.call('SET', zp .. 'folded', start, 'NX', 'PXAT', exp)
  end
  if fresh and redis.call('ZSCORE', gp .. 'buckets', start) then
    redis.call('ZADD', gp .. 'lost', start, start)
  end
  if n1 + nm > 0 then
    local sums = need_sums(zp .. 'sum', zp .. 'count', same)
    -- pairs once some sum was off the grid (hot_sums.py): the sumc zset marks it, PAIR_MARK kept
    local pair = false
    if sums then
      pair = redis.call('EXISTS', zp .. 'sumc') == 1
      if not pair and flags >= 2 then
        redis.call('ZADD', zp .. 'sumc', 0, PAIR_MARK)
        pair = true
      end
    end
    -- the bucket's totals tell whether all its values so far were one value (counting streams: 1)
    -- and bound the magnitude of its values so far (for the min/max skip in update)
    local v = tonumber(A[at + 8])
    local lo, hi = redis.call('ZSCORE', tp .. 'min', start), redis.call('ZSCORE', tp .. 'max', start)
    local const = (lo and hi and v == tonumber(A[at + 9]) and tonumber(lo) == v and tonumber(hi) == v) or false
    local bound = lo and hi and math.max(math.abs(tonumber(lo)), math.abs(tonumber(hi))) or nil
    update(zp, A, k0, n1, true, same, sums, const, bound, v0, nil, nil, nil, nil, pair)
    update(zp, A, k0 + n1, nm, false, same, sums, const, bound, nil, c0, s0, lo0, hi0, pair, l0)
    if g ~= '1d' then
      window_apply(prefixes[s], g, start, A, k0, n1 + nm, A[at + 6], function(agg)
        return function(i)
          if i < n1 then return (agg == 'count' or same) and 1 or A[v0 + i] end
          return (agg == 'count' or same) and A[c0 + i - n1] or A[s0 + i - n1]
        end
      end, pair)
    end
  end
  for _, agg in ipairs(AGGS) do redis.call('PEXPIREAT', zp .. agg, exp) end
  redis.call('PEXPIREAT', zp .. 'sumc', exp)
  if g ~= '1m' and not fresh then redis.call('PEXPIREAT', zp .. 'folded', exp) end
  redis.call('ZINCRBY', tp .. 'count', A[at + 6], start)
  total_add(tp, start, A[at + 7], A[at + 10])
  redis.call('ZADD', tp .. 'min', 'LT', A[at + 8], start)
  redis.call('ZADD', tp .. 'max', 'GT', A[at + 9], start)
  redis.call('ZADD', gp .. 'buckets', start, start)
  touched[gp] = true
  return hi0 + nm + (l0 and nm or 0)
end

-- One all-time section at A[at]: stream index, then the batch's per-key increments as one pending
-- entry (hot_alltime_fold.lua: JSON [keys, counts, sums unless every sum is its count]). It is
-- appended to all:pend, folded into all:count|sum once FOLD_AT entries wait (or a long one came).
-- While a rebuild has marked the stream (hot_alltime.lua), the increments also go to
-- all:rebuild:count|sum at once.
local function write_alltime(A, at)
  local s, entry = tonumber(A[at]), A[at + 1]
  local p = prefixes[s]
  if redis.call('EXISTS', p .. 'all:rebuild') == 1 then
    local keys, counts, sums, lows = decode_pending(entry)
    alltime_add(p, 'all:rebuild:', keys, counts, sums, #keys, lows)
  end
  if redis.call('RPUSH', p .. 'all:pend', entry) >= FOLD_AT or #entry >= FOLD_BYTES then
    fold_alltime(p)
  end
  return at + 2
end

-- Dedup (tiers/hot_dedup.py): every id digest against the live slices of the window, before any
-- write; a batch with one found writes nothing (and consumes no id) and says which.
local n_dups = tonumber(take())
local dups_json = take()
local dedup = {}
local found = {}
local n_sections = tonumber(take())
if n_sections > 0 then
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local slice = math.ceil(dedup_px / DEDUP_SLICES)
  local first, last = math.floor((clock - dedup_px) / slice), math.floor(clock / slice)
  for _ = 1, n_sections do
    -- the section's n digests arrive concatenated in one argument (16 bytes each)
    local s, n, blob = tonumber(take()), tonumber(take()), take()
    local digests = {}
    for i = 1, n do
      digests[i] = string.sub(blob, 16 * i - 15, 16 * i)
    end
    dedup[#dedup + 1] = {s, digests, n}
    for g = first, last do
      local key = prefixes[s] .. 'dd:' .. string.format('%.0f', g * slice)
      if redis.call('EXISTS', key) == 1 then
        for i = 0, n - 1, CHUNK do
          local m = math.min(CHUNK, n - i)
          local hit = redis.call('SMISMEMBER', key, unpack(digests, i + 1, i + m))
          for j = 1, m do
            if hit[j] == 1 then
              found[#found + 1] = s
              found[#found + 1] = i + j - 1
            end
          end
        end
      end
    end
  end
  if #found > 0 then
    return {'dups', found}
  end
  local key = string.format('%.0f', last * slice)
  local exp = (last + 1) * slice + dedup_px
  for _, d in ipairs(dedup) do
    local s, digests, n = d[1], d[2], d[3]
    for i = 0, n - 1, CHUNK do
      redis.call('SADD', prefixes[s] .. 'dd:' .. key, unpack(digests, i + 1, math.min(n, i + CHUNK)))
    end
    redis.call('PEXPIREAT', prefixes[s] .. 'dd:' .. key, string.format('%.0f', exp))
  end
end

-- Pre-aggregated buckets and all-time sections of the events (duplicates left out), read in place from ARGV.
for _ = 1, tonumber(take()) do
  pos = write_bucket(ARGV, pos)
end
for _ = 1, tonumber(take()) do
  pos = write_alltime(ARGV, pos)
end

for gp in pairs(touched) do
  for _, key in ipairs({gp .. 'buckets', gp .. 'total:count', gp .. 'total:sum', gp .. 'total:min', gp .. 'total:max',
                        gp .. 'total:sumc'}) do
    redis.call('PERSIST', key)
  end
end

if mode == 'ingest' then
  redis.call('XADD', KEYS[1], '*', 'tenant', tenant, 'data', log_data, 'dups', dups_json)
end

local score, rank = false, false
if rank_stream > 0 then
  fold_alltime(prefixes[rank_stream])
  local key = prefixes[rank_stream] .. 'all:sum'
  if redis.call('EXISTS', key) == 0 then key = prefixes[rank_stream] .. 'all:count' end
  score = redis.call('ZSCORE', key, rank_member)
  if score then
    local greater = redis.call('ZCOUNT', key, '(' .. score, '+inf')
    local less = redis.call('ZCOUNT', key, '-inf', '(' .. score)
    -- ZRANK orders equal scores by member ascending: that is our tie order too.
    rank = greater + redis.call('ZRANK', key, rank_member) - less + 1
  end
end
return {'ok', n_dups, floor_raw, score, rank}
