-- The all-time leaderboards' pending increments (prepended to hot_ingest.lua, hot_alltime.lua,
-- hot_compact.lua and hot_delete.lua; tiers/hot.py explains the layout).
-- Ingest does not ZINCRBY each key of a batch into all:count|sum (two 100k-member zsets: the
-- costliest part of a batch); it appends the batch's per-key increments, one JSON entry
-- [keys, counts, sums or absent (every sum is its count)], to the list all:pend. fold_alltime
-- merges every pending entry per key and adds the merged increments into the zsets, atomically
-- with emptying the list: each increment is counted once. Every reader of the zsets folds first
-- (the score route, the rebuild's swap drops them instead: its totals hold them, deletes), so
-- no answer misses a pending increment; ingest folds once FOLD_AT entries wait or an entry is
-- FOLD_BYTES long or more (so a stream's list stays below FOLD_AT x FOLD_BYTES), compaction (the
-- compact_hot job and the lazy step before an ingest) at every step.
-- Sums are pairs (hot_pairs.lua, prepended before this): an entry's fourth element, when
-- present, holds the low parts of its sums; all:sumc the board's low parts, once some sum was
-- off hot_sums.GRID (then every addition to all:sum is a pair addition).
local FOLD_AT = 64
local FOLD_BYTES = 262144
local ALL_CHUNK = 3000

local function all_on_grid(x)
  local y = x * 256
  return math.abs(x) < 1048576 and y == math.floor(y)
end

-- sum += (sums, lows) for keys[1 .. n], as pairs: low parts in comp (created with PAIR_MARK).
local function zpair_many(sum, comp, keys, sums, lows, n)
  if redis.call('EXISTS', comp) == 0 then redis.call('ZADD', comp, 0, PAIR_MARK) end
  local maxlo = 0
  for i = 0, n - 1, ALL_CHUNK do
    local m = math.min(ALL_CHUNK, n - i)
    local old = redis.call('ZMSCORE', sum, unpack(keys, i + 1, i + m))
    local oldl = redis.call('ZMSCORE', comp, unpack(keys, i + 1, i + m))
    local args, cargs, nc = {}, {}, 0
    for t = 1, m do
      local ol = tonumber(oldl[t] or 0)
      local h, l = pair_add(tonumber(old[t] or 0), ol, tonumber(sums[i + t]), tonumber(lows and lows[i + t] or 0))
      args[2 * t - 1], args[2 * t] = h, keys[i + t]
      if l ~= 0 or ol ~= 0 then
        nc = nc + 1
        cargs[2 * nc - 1], cargs[2 * nc] = l, keys[i + t]
        if math.abs(l) > maxlo then maxlo = math.abs(l) end
      end
    end
    redis.call('ZADD', sum, unpack(args))
    if nc > 0 then redis.call('ZADD', comp, unpack(cargs, 1, 2 * nc)) end
  end
  if maxlo > 0 then redis.call('ZADD', comp, 'GT', maxlo, PAIR_MARK) end
end

-- key[i] += deltas[i] for keys[1 .. n] (ZINCRBY is not variadic: read all, write all).
local function zincr_many(key, keys, deltas, n)
  for i = 0, n - 1, ALL_CHUNK do
    local m = math.min(ALL_CHUNK, n - i)
    local old = redis.call('ZMSCORE', key, unpack(keys, i + 1, i + m))
    local args = {}
    for t = 1, m do
      local d = deltas[i + t]
      if old[t] then d = tonumber(old[t]) + d end
      args[2 * t - 1] = d
      args[2 * t] = keys[i + t]
    end
    redis.call('ZADD', key, unpack(args, 1, 2 * m))
  end
end

-- board ('all:' or 'all:rebuild:') count|sum += counts|sums of keys[1 .. n]; sums nil: every
-- sum is its count. The sum zset exists only once some key's sum differs from its count. lows:
-- the sums' low parts, or nil (0).
local function alltime_add(p, board, keys, counts, sums, n, lows)
  local sum, count = p .. board .. 'sum', p .. board .. 'count'
  local has_sums = redis.call('EXISTS', sum) == 1
  if not has_sums and sums then
    if redis.call('EXISTS', count) == 1 then redis.call('ZUNIONSTORE', sum, 1, count) end
    has_sums = true
  end
  zincr_many(count, keys, counts, n)
  if not has_sums then return end
  local pair = lows ~= nil or redis.call('EXISTS', sum .. 'c') == 1
  if not pair and sums then
    for i = 1, n do
      if not all_on_grid(sums[i]) then
        pair = true
        break
      end
    end
  end
  if pair then
    zpair_many(sum, sum .. 'c', keys, sums or counts, lows, n)
  else
    zincr_many(sum, keys, sums or counts, n)
  end
end

-- One pending entry as {keys, counts, sums or nil, low parts or nil}.
local function decode_pending(entry)
  local d = cjson.decode(entry)
  local sums, lows = d[3], d[4]
  if type(sums) ~= 'table' then sums = nil end
  if type(lows) ~= 'table' then lows = nil end
  return d[1], d[2], sums, lows
end

-- Fold the stream's pending entries (prefix p) into all:count|sum. Returns how many there were.
local function fold_alltime(p)
  local list = p .. 'all:pend'
  local entries = redis.call('LRANGE', list, 0, -1)
  if #entries == 0 then return 0 end
  redis.call('DEL', list)
  local keys, counts, sums, lows, at, n, same, paired = {}, {}, {}, {}, {}, 0, true, false
  for _, entry in ipairs(entries) do
    local ks, cs, ss, ls = decode_pending(entry)
    if ss then same = false else ss = cs end
    if ls then paired = true end
    for i = 1, #ks do
      local k = ks[i]
      local j = at[k]
      local l = ls and ls[i] or 0
      if j then
        counts[j] = counts[j] + cs[i]
        sums[j], lows[j] = pair_add(sums[j], lows[j], ss[i], l)
        if lows[j] ~= 0 then paired = true end
      else
        n = n + 1
        keys[n], counts[n], sums[n], lows[n], at[k] = k, cs[i], ss[i], l, n
      end
    end
  end
  alltime_add(p, 'all:', keys, counts, (not same) and sums or nil, n, paired and lows or nil)
  return #entries
end

