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
    -- the totals' sums come rounded (rollups.exactsum); the side's low parts are kept
    redis.call('ZUNIONSTORE', p .. 'all:sum', 2, same and new_c or new_s, side_same and side_c or side_s)
    if redis.call('EXISTS', side_s .. 'c') == 1 then redis.call('ZUNIONSTORE', p .. 'all:sumc', 1, side_s .. 'c') end
  end
  redis.call('ZUNIONSTORE', p .. 'all:count', 2, new_c, side_c)
  redis.call('DEL', p .. 'all:rebuild', p .. 'all:pend', unpack(scratch(p)))
  return 1
end

if mode == 'fold' then
  return fold_alltime(ARGV[3])
end

return redis.error_reply('unknown mode ' .. tostring(mode))
