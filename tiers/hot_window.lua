-- Materialised unions of runs of buckets, for sliding windows (prepended to hot_query.lua; see
-- tiers/hot.py, Sliding windows). `window_runs(prefix, bs, agg)` replaces each run of two or
-- more consecutive buckets of bs that a union may stand for with one entry reading that union:
--   tierstore:hot:{T:S}:win:<g>:<a>:<b>:<agg>    zset, the union (SUM) of the agg zsets of every
--                                               bucket of g indexed in [a, b)
--   tierstore:hot:{T:S}:win:<g>:<a>:<b>:<agg>:v  its version: the sum of those buckets' total
--                                               counts (<g>:total:count) it holds
--   tierstore:hot:{T:S}:win:index               zset, member '<g>:<a>:<b>:<agg>', score a
-- Runs: minutes within one hour (a whole hour) or one quarter hour; hours read wholly from their
-- own zsets (folded whole) within one 8-hour block (UTC). A union is read only when its version equals the sum of the current total
-- counts of the run's buckets and the run is every bucket indexed in [a, b): totals only grow, and
-- every event aggregated into such a bucket either updates the union and its version in the same
-- ingest script (hot_ingest.lua, `window_apply`) or leaves the version behind; hot_delete.lua drops
-- every union of the stream. Lost buckets are detected by collect before any union is considered.
local WIN_TTL = 900000  -- ms a union lives unread
local WIN_BLOCK = {['1m'] = 3600000, ['1h'] = 8 * 3600000}
local WIN_WIDTH = {['1m'] = 60000, ['1h'] = 3600000}
local WIN_CHUNK = 3000
local WIN_QUARTER = 900000

local function win_ms(x)
  return string.format('%.0f', x)
end

local function win_source(b, agg)
  return agg == 'sum' and b.sum or b.zp .. agg
end

-- The sum of the total counts of the buckets run[i..j] (starts as strings).
local function win_version(prefix, g, run, i, j)
  local starts = {}
  for t = i, j do starts[#starts + 1] = run[t].start end
  local total = 0
  for _, c in ipairs(redis.call('ZMSCORE', prefix .. g .. ':total:count', unpack(starts))) do
    total = total + tonumber(c or 0)
  end
  return total
end

-- Whether run[1..n] is every bucket of g indexed in [a, b).
local function win_complete(prefix, g, a, b, n)
  return redis.call('ZCOUNT', prefix .. g .. ':buckets', win_ms(a), '(' .. win_ms(b)) == n
end

-- key[m] += score for every member of each zset in sources (as ZUNIONSTORE would add them, in order).
local function win_add(key, sources)
  for _, src in ipairs(sources) do
    local rows = redis.call('ZRANGE', src, 0, -1, 'WITHSCORES')
    for i = 1, #rows, 2 * WIN_CHUNK do
      local j = math.min(i + 2 * WIN_CHUNK - 1, #rows)
      local members = {}
      for t = i, j, 2 do members[#members + 1] = rows[t] end
      local old = redis.call('ZMSCORE', key, unpack(members))
      local args = {}
      for t = 1, #members do
        local d = rows[i + 2 * t - 1]
        if old[t] then d = tonumber(old[t]) + tonumber(d) end
        args[2 * t - 1], args[2 * t] = d, members[t]
      end
      redis.call('ZADD', key, unpack(args))
    end
  end
end

-- The union of run (buckets of g, time order) for agg: reused, extended in place from the union
-- of a prefix of the run (a window's open edge grows by a minute at a time), or built.
local function win_union(prefix, g, run, agg)
  local a = tonumber(run[1].start)
  local b = tonumber(run[#run].start) + WIN_WIDTH[g]
  local name = g .. ':' .. win_ms(a) .. ':' .. win_ms(b) .. ':' .. agg
  local key = prefix .. 'win:' .. name
  local index = prefix .. 'win:index'
  local version = win_version(prefix, g, run, 1, #run)
  local have = redis.call('GET', key .. ':v')
  if have and tonumber(have) == version and redis.call('EXISTS', key) == 1 then
    redis.call('PEXPIRE', key, WIN_TTL)
    redis.call('PEXPIRE', key .. ':v', WIN_TTL)
    return key
  end
  -- the longest valid union of a prefix of the run (same g, a, agg); stale ones go
  local base, from = nil, 1
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', index, win_ms(a), win_ms(a))) do
    local mg, _, mb, magg = string.match(member, '^([^:]+):([^:]+):([^:]+):([^:]+)$')
    local other = prefix .. 'win:' .. member
    local v = redis.call('GET', other .. ':v')
    mb = tonumber(mb)
    if not v then
      redis.call('ZREM', index, member)
    elseif mg == g and magg == agg and mb < b then
      local n = 0
      while n < #run and tonumber(run[n + 1].start) < mb do n = n + 1 end
      if n > 0 and tonumber(v) == win_version(prefix, g, run, 1, n) and win_complete(prefix, g, a, mb, n) then
        if n + 1 > from then base, from = member, n + 1 end
      else
        redis.call('DEL', other, other .. ':v')
        redis.call('ZREM', index, member)
      end
    end
  end
  -- unions of the same g, agg and end starting earlier in the block: the window slid past them
  local block = math.floor(a / WIN_BLOCK[g]) * WIN_BLOCK[g]
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', index, win_ms(block), '(' .. win_ms(a))) do
    local mg, _, mb, magg = string.match(member, '^([^:]+):([^:]+):([^:]+):([^:]+)$')
    if mg == g and magg == agg and tonumber(mb) == b then
      redis.call('DEL', prefix .. 'win:' .. member, prefix .. 'win:' .. member .. ':v')
      redis.call('ZREM', index, member)
    end
  end
  local sources = {}
  for t = from, #run do sources[#sources + 1] = win_source(run[t], agg) end
  redis.call('DEL', key, key .. ':v')
  if base then
    redis.call('RENAME', prefix .. 'win:' .. base, key)
    redis.call('DEL', prefix .. 'win:' .. base .. ':v')
    redis.call('ZREM', index, base)
    win_add(key, sources)
  else
    redis.call('ZUNIONSTORE', key, #sources, unpack(sources))
  end
  redis.call('SET', key .. ':v', win_ms(version), 'PX', WIN_TTL)
  redis.call('PEXPIRE', key, WIN_TTL)
  redis.call('ZADD', index, a, name)
  return key
end

-- Append to out the union entry of run[i..j] (two or more buckets of g forming every bucket
-- indexed in their span), else its entries.
local function win_emit(prefix, out, run, i, j, agg)
  local g = run[i].g
  local a, b = tonumber(run[i].start), tonumber(run[j].start) + WIN_WIDTH[g]
  if j > i and win_complete(prefix, g, a, b, j - i + 1) then
    local src = agg
    if agg == 'sum' then  -- a run without sum zsets sums its counts: share the count union
      src = 'count'
      for t = i, j do
        if run[t].sum ~= run[t].zp .. 'count' then src = 'sum' end
      end
    end
    local part = {}
    for t = i, j do part[#part + 1] = run[t] end
    out[#out + 1] = {g = 'win', start = run[i].start, top = run[i].top, win = win_union(prefix, g, part, src)}
  else
    for t = i, j do out[#out + 1] = run[t] end
  end
end

-- bs with each run that a union may stand for replaced by one entry {g = 'win', win = union key}.
-- Minutes: a whole hour's run is one union; a partial hour's (a window's edges) is cut at
-- quarter hours, so the edge that slides rebuilds at most a quarter hour's union per minute.
local function window_runs(prefix, bs, agg)
  local out, run = {}, {}
  local function flush()
    if #run == 0 then return end
    local g = run[1].g
    local a = tonumber(run[1].start)
    if g == '1h' or (a % 3600000 == 0 and tonumber(run[#run].start) == a + 3540000) then
      win_emit(prefix, out, run, 1, #run, agg)
    else
      local i = 1
      for j = 1, #run do
        if j == #run or math.floor(tonumber(run[j + 1].start) / WIN_QUARTER) ~= math.floor(tonumber(run[j].start) / WIN_QUARTER) then
          win_emit(prefix, out, run, i, j, agg)
          i = j + 1
        end
      end
    end
    run = {}
  end
  for _, e in ipairs(bs) do
    local g = e.g
    if WIN_BLOCK[g] and (g == '1m' or e.whole) then
      local last = run[#run]
      if last and (last.g ~= g
          or math.floor(tonumber(last.start) / WIN_BLOCK[g]) ~= math.floor(tonumber(e.start) / WIN_BLOCK[g])) then
        flush()
      end
      run[#run + 1] = e
    else
      flush()
      out[#out + 1] = e
    end
  end
  flush()
  return out
end
