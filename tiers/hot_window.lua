-- Materialised unions of runs of buckets, for sliding windows (prepended to hot_query.lua; see
-- tiers/hot.py, Sliding windows). `window_runs(prefix, bs, agg)` replaces each run of two or
-- more consecutive buckets of bs that a union may stand for with one entry reading that union:
--   tierstore:hot:{T:S}:win:<g>:<a>:<b>:<agg>    zset, the union (SUM) of the agg zsets of every
--                                               bucket of g indexed in [a, b)
--   tierstore:hot:{T:S}:win:<g>:<a>:<b>:<agg>:v  its version: the sum of those buckets' total
--                                               counts (<g>:total:count) it holds
--   tierstore:hot:{T:S}:win:index               zset, member '<g>:<a>:<b>:<agg>', score a
-- Runs (window_runs): minutes within one hour; hours read wholly from their own zsets (folded
-- whole), any number (built from the unions of their 8-hour blocks, UTC). A union is read only when its version equals the sum of the current total
-- counts of the run's buckets and the run is every bucket indexed in [a, b): totals only grow, and
-- every event aggregated into such a bucket either updates the union and its version in the same
-- ingest script (hot_ingest.lua, `window_apply`) or leaves the version behind; hot_delete.lua drops
-- every union of the stream. Lost buckets are detected by collect before any union is considered.
-- Build budget: a read builds (or extends) unions from at most `win_budget` source members in
-- all (the sum of the ZCARDs it would union; hot_query.lua sets it from ARGV[3]); a run whose union
-- is missing or stale and would cost more is read as its buckets (the same answer: a union only
-- stands for their sum), and the stream is marked wanted (win:wanted, WIN_TTL) so that the
-- compact_hot job, whose reads have no budget, builds it off the request path (tiers/hot_warm.py).
-- A union that exists and is valid is always read, whatever its size.
local WIN_TTL = 900000  -- ms a union lives unread
local win_budget = math.huge  -- members the call may still union (hot_query.lua sets it)
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
-- of a prefix of the run (a window's open edge grows by a minute at a time), or built: from the
-- zsets that parts() names when given (the unions of the run's blocks), else from the buckets';
-- touch: the keys (unions of the run's blocks) whose TTL a reuse renews; budgeted: a build must
-- fit in win_budget, else nothing is built and nil returned (the caller reads the buckets).
local function win_union(prefix, g, run, agg, parts, touch, budgeted)
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
    for _, other in ipairs(touch or {}) do  -- the parts live as long as the union they build
      redis.call('PEXPIRE', other, WIN_TTL)
      redis.call('PEXPIRE', other .. ':v', WIN_TTL)
    end
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
        -- built from parts, a run extends only a union that leaves less than a block to add
        -- (not its first block's union: a part, kept)
        if n + 1 > from and (not parts or #run - n < WIN_BLOCK[g] / WIN_WIDTH[g]) then
          base, from = member, n + 1
        end
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
  if budgeted then  -- the members this build would read (from scratch: every bucket of the run)
    local cost = 0
    for t = (parts and not base) and 1 or from, #run do cost = cost + redis.call('ZCARD', win_source(run[t], agg)) end
    if cost > win_budget then
      redis.call('SET', prefix .. 'win:wanted', '1', 'PX', WIN_TTL)
      return nil
    end
    win_budget = win_budget - cost
  end
  local sources = {}
  if parts and not base then
    sources = parts()
  else
    for t = from, #run do sources[#sources + 1] = win_source(run[t], agg) end
  end
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

-- run (hours, time order) cut where a block of WIN_BLOCK['1h'] (8 hours, UTC) ends: a list of runs.
local function win_blocks(run)
  local out, cur, at = {}, {}, nil
  for _, e in ipairs(run) do
    local blk = math.floor(tonumber(e.start) / WIN_BLOCK['1h'])
    if at and blk ~= at then
      out[#out + 1] = cur
      cur = {}
    end
    cur[#cur + 1], at = e, blk
  end
  if #cur > 0 then out[#out + 1] = cur end
  return out
end

-- Append to out the union entry of run[i..j] (two or more buckets of g forming every bucket
-- indexed in their span), else its entries.
local function win_emit(prefix, out, run, i, j, agg)
  local g = run[i].g
  local a, b = tonumber(run[i].start), tonumber(run[j].start) + WIN_WIDTH[g]
  local paired = false  -- sums as pairs (hot_pairs.lua): no union of them (hot_query.lua reads them exactly)
  if agg == 'sum' then
    for t = i, j do paired = paired or run[t].comp ~= nil end
  end
  if j > i and not paired and win_complete(prefix, g, a, b, j - i + 1) then
    local src = agg
    if agg == 'sum' then  -- a run without sum zsets sums its counts: share the count union
      src = 'count'
      for t = i, j do
        if run[t].sum ~= run[t].zp .. 'count' then src = 'sum' end
      end
    end
    local part = {}
    for t = i, j do part[#part + 1] = run[t] end
    local parts, touch
    if g == '1h' then  -- a run over several blocks: built from its blocks' unions
      local blocks, names = win_blocks(part), {}
      if #blocks > 1 then
        for _, blk in ipairs(blocks) do
          if #blk > 1 then
            names[#names + 1] = prefix .. 'win:' .. g .. ':' .. blk[1].start .. ':'
              .. win_ms(tonumber(blk[#blk].start) + WIN_WIDTH[g]) .. ':' .. src
          end
        end
        touch = names
        parts = function()
          local keys = {}
          for _, blk in ipairs(blocks) do
            if #blk > 1 then
              keys[#keys + 1] = win_union(prefix, g, blk, src)
            else
              keys[#keys + 1] = win_source(blk[1], src)
            end
          end
          return keys
        end
      end
    end
    local win = win_union(prefix, g, part, src, parts, touch, true)
    if win then
      out[#out + 1] = {g = 'win', start = run[i].start, top = run[i].top, win = win}
    else  -- over the build budget: the buckets themselves
      for t = i, j do out[#out + 1] = run[t] end
    end
  else
    for t = i, j do out[#out + 1] = run[t] end
  end
end

-- bs with each run that a union may stand for replaced by one entry {g = 'win', win = union key}.
-- Hours: a run of folded hours is one union however long ("last 24 h" reads one zset for its
-- closed hours), built from the unions of its 8-hour blocks, then extended in place as hours fold.
-- Minutes: a run from an hour's start (a whole hour, or the open edge, which grows in place) is
-- one union; a run starting inside an hour (the edge that slides) is cut at its first quarter
-- hour, so that edge rebuilds at most a quarter hour's union per minute, and the rest of its hour
-- once per quarter hour.
local function window_runs(prefix, bs, agg)
  local out, run = {}, {}
  local function flush()
    if #run == 0 then return end
    local g = run[1].g
    local a = tonumber(run[1].start)
    local cut = #run
    if g == '1m' and a % 3600000 ~= 0 then
      for j = 1, #run - 1 do
        if math.floor(tonumber(run[j + 1].start) / WIN_QUARTER) ~= math.floor(tonumber(run[j].start) / WIN_QUARTER) then
          cut = j
          break
        end
      end
    end
    win_emit(prefix, out, run, 1, cut, agg)
    if cut < #run then win_emit(prefix, out, run, cut + 1, #run, agg) end
    run = {}
  end
  for _, e in ipairs(bs) do
    local g = e.g
    if WIN_BLOCK[g] and (g == '1m' or e.whole) then
      local last = run[#run]
      if last and (last.g ~= g or (g == '1m'
          and math.floor(tonumber(last.start) / WIN_BLOCK[g]) ~= math.floor(tonumber(e.start) / WIN_BLOCK[g]))) then
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
