-- One ingest batch of the hot tier, atomically: seal check, dedup, log append, aggregates.
-- Called by tiers/hot.py (`_Batch.encode` builds ARGV; its docstring is the layout).
-- KEYS[1] the event log stream, KEYS[2] the seal mark, KEYS[3] the hot floor mark.
-- Bucket, total and dedup keys are derived from the stream prefixes in ARGV.
-- Returns {'ok', duplicates, floor, score, rank} | {'sealed', seal} | {'floor', floor}.
local CHUNK = 3000
local NO_MARK = '-1e300'
local GRANS = {{'1m', 60000}, {'1h', 3600000}, {'1d', 86400000}}

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
local ttl_extra = tonumber(take())
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
  local seal = redis.call('GET', KEYS[2]) or NO_MARK
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

-- score[m] += delta[m] for each member (ZINCRBY is not variadic: read all, write all). Deltas may
-- be strings as they came in ARGV: a new member takes it as is (formatting numbers costs).
local function incr(key, keys, deltas, n)
  for i = 1, n, CHUNK do
    local j = math.min(i + CHUNK - 1, n)
    local old = redis.call('ZMSCORE', key, unpack(keys, i, j))
    local args, a = {}, 0
    for t = i, j do
      local o = old[t - i + 1]
      args[a + 1] = o and tonumber(o) + tonumber(deltas[t]) or deltas[t]
      args[a + 2] = keys[t]
      a = a + 2
    end
    redis.call('ZADD', key, unpack(args, 1, a))
  end
end

-- ZADD LT | GT of one score per member.
local function bound(key, flag, keys, vals, n)
  for i = 1, n, CHUNK do
    local j = math.min(i + CHUNK - 1, n)
    local args, a = {}, 0
    for t = i, j do
      args[a + 1] = vals[t]
      args[a + 2] = keys[t]
      a = a + 2
    end
    redis.call('ZADD', key, flag, unpack(args, 1, a))
  end
end

-- Index and totals of each touched (stream, granularity): trimmed of dead buckets at the end,
-- expiring with their last bucket.
local touched = {}

local floor = tonumber(floor_raw)

-- b: {s = stream index, g = name, gms = width, start = ms string, n, keys, cnt, sum, mn, mx,
--     tc, ts, tn, tx = the bucket's totals}
local function write_bucket(b)
  local p = prefixes[b.s]
  local zp = p .. b.g .. ':' .. b.start .. ':'
  local gp = p .. b.g .. ':'
  local tp = gp .. 'total:'
  local start = tonumber(b.start)
  local exp = start + b.gms + ttl_extra
  local member = b.start
  incr(zp .. 'count', b.keys, b.cnt, b.n)
  incr(zp .. 'sum', b.keys, b.sum, b.n)
  bound(zp .. 'min', 'LT', b.keys, b.mn, b.n)
  bound(zp .. 'max', 'GT', b.keys, b.mx, b.n)
  redis.call('PEXPIREAT', zp .. 'count', exp)
  redis.call('PEXPIREAT', zp .. 'sum', exp)
  redis.call('PEXPIREAT', zp .. 'min', exp)
  redis.call('PEXPIREAT', zp .. 'max', exp)
  redis.call('ZINCRBY', tp .. 'count', b.tc, member)
  redis.call('ZINCRBY', tp .. 'sum', b.ts, member)
  redis.call('ZADD', tp .. 'min', 'LT', b.tn, member)
  redis.call('ZADD', tp .. 'max', 'GT', b.tx, member)
  redis.call('ZADD', gp .. 'buckets', start, member)
  local t = touched[gp]
  if not t then
    touched[gp] = {gms = b.gms, exp = exp}
  elseif exp > t.exp then
    t.exp = exp
  end
end

local function write_alltime(s, keys, cnt, sum, n)
  incr(prefixes[s] .. 'all:count', keys, cnt, n)
  incr(prefixes[s] .. 'all:sum', keys, sum, n)
end

-- Events with ids, one by one: dedup first (a refused batch must not have consumed its ids).
local dups = {}
local fresh = {}
local n_id = tonumber(take())
for _ = 1, n_id do
  local s, key, ts, value, id, row = tonumber(take()), take(), tonumber(take()), tonumber(take()), take(), take()
  if redis.call('SET', prefixes[s] .. 'id:' .. id, '1', 'NX', 'PX', dedup_px) then
    fresh[#fresh + 1] = {s, key, ts, value}
  else
    dups[#dups + 1] = tonumber(row)
  end
end

-- Pre-aggregated buckets of the id-less events, read in place from ARGV.
for _ = 1, tonumber(take()) do
  local b = {s = tonumber(take()), g = take(), gms = tonumber(take()), start = take()}
  local n1, nm = tonumber(take()), tonumber(take())
  b.tc, b.ts, b.tn, b.tx = take(), take(), take(), take()
  local n = n1 + nm
  local keys, cnt, sum, mn, mx = {}, {}, {}, {}, {}
  for i = 1, n do keys[i] = ARGV[pos + i - 1] end
  pos = pos + n
  for i = 1, n1 do
    local v = ARGV[pos + i - 1]
    cnt[i], sum[i], mn[i], mx[i] = '1', v, v, v
  end
  pos = pos + n1
  for i = 1, nm do
    cnt[n1 + i] = ARGV[pos + i - 1]
    sum[n1 + i] = ARGV[pos + nm + i - 1]
    mn[n1 + i] = ARGV[pos + 2 * nm + i - 1]
    mx[n1 + i] = ARGV[pos + 3 * nm + i - 1]
  end
  pos = pos + 4 * nm
  b.n, b.keys, b.cnt, b.sum, b.mn, b.mx = n, keys, cnt, sum, mn, mx
  write_bucket(b)
end

for _ = 1, tonumber(take()) do
  local s, n = tonumber(take()), tonumber(take())
  local keys, cnt, sum = {}, {}, {}
  for i = 1, n do
    keys[i] = ARGV[pos + i - 1]
    cnt[i] = ARGV[pos + n + i - 1]
    sum[i] = ARGV[pos + 2 * n + i - 1]
  end
  pos = pos + 3 * n
  write_alltime(s, keys, cnt, sum, n)
end

-- Fresh id events: aggregated here (their buckets were written above already, if any: the
-- read-modify-write of a second pass adds to what the first wrote).
if #fresh > 0 then
  local buckets, order = {}, {}
  local alltime, aorder = {}, {}
  local function add(agg, key, value)
    local i = agg.pos[key]
    if not i then
      i = agg.n + 1
      agg.n, agg.pos[key] = i, i
      agg.keys[i], agg.cnt[i], agg.sum[i], agg.mn[i], agg.mx[i] = key, 0, 0, value, value
    end
    agg.cnt[i] = agg.cnt[i] + 1
    agg.sum[i] = agg.sum[i] + value
    if value < agg.mn[i] then agg.mn[i] = value end
    if value > agg.mx[i] then agg.mx[i] = value end
  end
  local function new_agg(fields)
    fields.n, fields.pos, fields.keys, fields.cnt, fields.sum, fields.mn, fields.mx = 0, {}, {}, {}, {}, {}, {}
    fields.tc, fields.ts, fields.tn, fields.tx = 0, 0, math.huge, -math.huge
    return fields
  end
  for _, e in ipairs(fresh) do
    local s, key, ts, value = e[1], e[2], e[3], e[4]
    local a = alltime[s]
    if not a then
      a = new_agg({s = s})
      alltime[s] = a
      aorder[#aorder + 1] = a
    end
    add(a, key, value)
    if ts >= floor then
      for _, g in ipairs(GRANS) do
        local start = ts - ts % g[2]
        if start + g[2] + ttl_extra > now then
          local start_s = string.format('%.0f', start)
          local slot = s .. ':' .. g[1] .. ':' .. start_s
          local b = buckets[slot]
          if not b then
            b = new_agg({s = s, g = g[1], gms = g[2], start = start_s})
            buckets[slot] = b
            order[#order + 1] = b
          end
          add(b, key, value)
          b.tc, b.ts = b.tc + 1, b.ts + value
          if value < b.tn then b.tn = value end
          if value > b.tx then b.tx = value end
        end
      end
    end
  end
  for _, b in ipairs(order) do write_bucket(b) end
  for _, a in ipairs(aorder) do write_alltime(a.s, a.keys, a.cnt, a.sum, a.n) end
end

for gp, t in pairs(touched) do
  local index = gp .. 'buckets'
  -- a bucket is dead once start + width + hot age + grace <= now (its keys expired)
  local dead = redis.call('ZRANGEBYSCORE', index, '-inf', now - t.gms - ttl_extra)
  for _, key in ipairs({index, gp .. 'total:count', gp .. 'total:sum', gp .. 'total:min', gp .. 'total:max'}) do
    for i = 1, #dead, CHUNK do
      redis.call('ZREM', key, unpack(dead, i, math.min(i + CHUNK - 1, #dead)))
    end
    redis.call('PEXPIREAT', key, t.exp, 'NX')
    redis.call('PEXPIREAT', key, t.exp, 'GT')
  end
end

redis.call('SADD', 'tierstore:hot:tenants', tenant)
redis.call('SADD', 'tierstore:hot:streams:{' .. tenant .. '}', unpack(names))

if mode == 'ingest' then
  local dups_json = #dups > 0 and cjson.encode(dups) or '[]'
  redis.call('XADD', KEYS[1], '*', 'tenant', tenant, 'data', log_data, 'dups', dups_json)
end

local score, rank = false, false
if rank_stream > 0 then
  local key = prefixes[rank_stream] .. 'all:sum'
  score = redis.call('ZSCORE', key, rank_member)
  if score then
    local greater = redis.call('ZCOUNT', key, '(' .. score, '+inf')
    local less = redis.call('ZCOUNT', key, '-inf', '(' .. score)
    -- ZRANK orders equal scores by member ascending: that is our tie order too.
    rank = greater + redis.call('ZRANK', key, rank_member) - less + 1
  end
end
return {'ok', #dups, floor_raw, score, rank}
