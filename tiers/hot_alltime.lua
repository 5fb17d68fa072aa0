-- Rebuilding the all-time leaderboards (tiers/hot.py `begin_alltime_rebuild`, `replace_alltime`;
-- scheduler/alltime.py says why this counts every event once), and folding their pending
-- increments (`fold_alltime`). Runs after hot_alltime_fold.lua.
--
-- begin: KEYS[1] the stream's event log. ARGV: 'begin', token, mark ttl ms, tenant, stream.
--   Marks the stream with `token` (ingest then also adds its all-time increments to
--   all:rebuild:count|sum), drops what an earlier rebuild left behind, and returns {id of its
--   log's last entry ('0-0': none), {tenant, stream}} — one script, so no batch of the stream is
--   logged after that entry without being counted aside.
-- swap: KEYS[1] any key of the stream. ARGV: 'swap', token, stream prefix, same (1: every sum of
--   all:new equals its count, and all:new:sum was not loaded).
--   all:count|sum := all:new:count|sum (loaded by the caller: the tiers' totals up to that entry)
--   + all:rebuild:count|sum; the mark and both pairs are dropped. Returns 1, or 0 (nothing
--   changed) when the stream's mark is not `token`'s: it expired, or another rebuild began.
-- A missing sum zset means every sum equals its count (hot_ingest.lua).
-- fold: KEYS[1] any key of the stream. ARGV: 'fold', '', stream prefix. Folds its pending
--   increments (hot_alltime_fold.lua) into all:count|sum; returns how many entries there were.
-- The swap drops the pending increments unfolded: each was logged before the mark (the totals
-- hold it) or after (all:rebuild holds it).
local mode, token = ARGV[1], ARGV[2]

local function prefix_of(tenant, stream)
  return 'tierstore:hot:{' .. tenant .. ':' .. stream .. '}:'
end

local function scratch(p)
  return {p .. 'all:rebuild:count', p .. 'all:rebuild:sum', p .. 'all:new:count', p .. 'all:new:sum',
          p .. 'all:rebuild:sumc'}
end

-- dest := a + b per member and err := its rounding error (a + b = dest + err exactly): Knuth's
-- TwoSum as six ZUNIONSTOREs (each one addition per member, in C: no Lua per member). A member
-- missing from a or b counts as absent, which gives the same as 0. err keeps its zeros.
local function union_two_sum(p, dest, err, a, b)
  local t1, t2 = p .. 'tmp:two_sum:1', p .. 'tmp:two_sum:2'
  redis.call('ZUNIONSTORE', dest, 2, a, b)                       -- s = a + b
  redis.call('ZUNIONSTORE', t1, 2, dest, a, 'WEIGHTS', 1, -1)    -- bb = s - a
  redis.call('ZUNIONSTORE', t2, 2, dest, t1, 'WEIGHTS', 1, -1)   -- s - bb
  redis.call('ZUNIONSTORE', t2, 2, a, t2, 'WEIGHTS', 1, -1)      -- a - (s - bb)
  redis.call('ZUNIONSTORE', t1, 2, b, t1, 'WEIGHTS', 1, -1)      -- b - bb
  redis.call('ZUNIONSTORE', err, 2, t2, t1)                      -- err
  redis.call('DEL', t1, t2)
end

if mode == 'begin' then
  local ttl = ARGV[3]
  local seen, marked = {}, {}
  local function mark(tenant, stream)
    local p = prefix_of(tenant, stream)
    if seen[p] then return end
    seen[p] = true
    redis.call('DEL', unpack(scratch(p)))
    redis.call('SET', p .. 'all:rebuild', token, 'PX', ttl)
    marked[#marked + 1] = tenant
    marked[#marked + 1] = stream
  end
  for i = 4, #ARGV, 2 do mark(ARGV[i], ARGV[i + 1]) end
  local last = '0-0'
  if redis.call('EXISTS', KEYS[1]) == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[1])
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then last = info[i + 1] end
    end
  end
  return {last, marked}
end

if mode == 'swap' then
  local p, same = ARGV[3], ARGV[4] == '1'
  if redis.call('GET', p .. 'all:rebuild') ~= token then return 0 end
  local side_c, side_s, new_c, new_s = unpack(scratch(p))
  local side_same = redis.call('EXISTS', side_s) == 0
  redis.call('DEL', p .. 'all:sumc')
  if same and side_same then
    redis.call('DEL', p .. 'all:sum')
  else
    -- all:sum + all:sumc := new + side as pairs (hot_pairs.lua): the totals come rounded (rollups.exactsum)
    union_two_sum(p, p .. 'all:sum', p .. 'all:sumc', same and new_c or new_s, side_same and side_c or side_s)
    if redis.call('EXISTS', side_s .. 'c') == 1 then
      redis.call('ZUNIONSTORE', p .. 'all:sumc', 2, p .. 'all:sumc', side_s .. 'c')
      redis.call('ZREM', p .. 'all:sumc', PAIR_MARK)
    end
    redis.call('ZREMRANGEBYSCORE', p .. 'all:sumc', 0, 0)
    local first = redis.call('ZRANGE', p .. 'all:sumc', 0, 0, 'WITHSCORES')
    local last = redis.call('ZRANGE', p .. 'all:sumc', -1, -1, 'WITHSCORES')
    if first[2] then
      local bound = math.max(math.abs(tonumber(first[2])), math.abs(tonumber(last[2])))
      redis.call('ZADD', p .. 'all:sumc', bound, PAIR_MARK)
    end
  end
  redis.call('ZUNIONSTORE', p .. 'all:count', 2, new_c, side_c)
  redis.call('DEL', p .. 'all:rebuild', p .. 'all:pend', unpack(scratch(p)))
  return 1
end

if mode == 'fold' then
  return fold_alltime(ARGV[3])
end

return redis.error_reply('unknown mode ' .. tostring(mode))
