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
local FOLD_AT = 64
local FOLD_BYTES = 262144
local ALL_CHUNK = 3000

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
-- sum is its count. The sum zset exists only once some key's sum differs from its count.
local function alltime_add(p, board, keys, counts, sums, n)
  local sum, count = p .. board .. 'sum', p .. board .. 'count'
  local has_sums = redis.call('EXISTS', sum) == 1
  if not has_sums and sums then
    if redis.call('EXISTS', count) == 1 then redis.call('ZUNIONSTORE', sum, 1, count) end
    has_sums = true
  end
  zincr_many(count, keys, counts, n)
  if has_sums then zincr_many(sum, keys, sums or counts, n) end
end

-- One pending entry as {keys, counts, sums or nil}.
local function decode_pending(entry)
  local d = cjson.decode(entry)
  local sums = d[3]
  if type(sums) ~= 'table' then sums = nil end
  return d[1], d[2], sums
end

-- Fold the stream's pending entries (prefix p) into all:count|sum. Returns how many there were.
local function fold_alltime(p)
  local list = p .. 'all:pend'
  local entries = redis.call('LRANGE', list, 0, -1)
  if #entries == 0 then return 0 end
  redis.call('DEL', list)
  local keys, counts, sums, at, n, same = {}, {}, {}, {}, 0, true
  for _, entry in ipairs(entries) do
    local ks, cs, ss = decode_pending(entry)
    if ss then same = false else ss = cs end
    for i = 1, #ks do
      local k = ks[i]
      local j = at[k]
      if j then
        counts[j] = counts[j] + cs[i]
        sums[j] = sums[j] + ss[i]
      else
        n = n + 1
        keys[n], counts[n], sums[n], at[k] = k, cs[i], ss[i], n
      end
    end
  end
  alltime_add(p, 'all:', keys, counts, (not same) and sums or nil, n)
  return #entries
end

