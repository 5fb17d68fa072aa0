-- Delete one stream's buckets lying wholly inside a range (tiers/hot.py `delete_range`).
-- KEYS[1] any key of the stream (routes the call), KEYS[2], KEYS[3] its seal and hot floor mark
-- copies (tiers/eventlog.py), dropped with the stream's registration when it is left empty.
-- Runs after hot_alltime_fold.lua.
-- ARGV: stream prefix, tenant, stream, drop all-time (0|1), then per granularity
--   (name, first bucket start to delete, last), inclusive.
-- Returns {members deleted (count zsets, plus all-time members), 1 if the stream is now empty}:
-- the caller then drops it from the tenant and stream sets (other slots: tiers/hot_cluster.py).
-- Deleting any bucket drops the stream's results-cache generation (tiers/versions.py) and every
-- materialised union of its buckets (hot_window.lua), which must never outlive their data.
local CHUNK = 3000
local AGGS = {'count', 'sum', 'min', 'max'}
local prefix, tenant, stream, drop_all = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'

local deleted = 0
local left = 0
for i = 5, #ARGV, 3 do
  local g, lo, hi = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local gp = prefix .. g .. ':'
  local starts = redis.call('ZRANGEBYSCORE', gp .. 'buckets', lo, hi)
  redis.call('ZREMRANGEBYSCORE', gp .. 'lost', lo, hi)
  for _, start in ipairs(starts) do
    local zp = gp .. start .. ':'
    deleted = deleted + redis.call('ZCARD', zp .. 'count')
    redis.call('DEL', zp .. 'count', zp .. 'sum', zp .. 'min', zp .. 'max', zp .. 'folded', zp .. 'sumc')
  end
  if #starts > 0 then
    local index = prefix .. 'win:index'
    for _, member in ipairs(redis.call('ZRANGE', index, 0, -1)) do
      redis.call('DEL', prefix .. 'win:' .. member, prefix .. 'win:' .. member .. ':v')
    end
    redis.call('DEL', index)
  end
  for j = 1, #starts, CHUNK do
    redis.call('DEL', prefix .. 'cache:gen')
    local last = math.min(j + CHUNK - 1, #starts)
    redis.call('ZREM', gp .. 'buckets', unpack(starts, j, last))
    for _, agg in ipairs(AGGS) do
      redis.call('ZREM', gp .. 'total:' .. agg, unpack(starts, j, last))
    end
    redis.call('ZREM', gp .. 'total:sumc', unpack(starts, j, last))
  end
  left = left + redis.call('ZCARD', gp .. 'buckets')
end

if drop_all then
  fold_alltime(prefix)  -- hot_alltime_fold.lua: the members counted include the pending ones
  deleted = deleted + redis.call('ZCARD', prefix .. 'all:count')
  redis.call('DEL', prefix .. 'all:count', prefix .. 'all:sum', prefix .. 'all:rebuild', prefix .. 'all:rebuild:count',
    prefix .. 'all:rebuild:sum', prefix .. 'all:new:count', prefix .. 'all:new:sum', prefix .. 'all:sumc',
    prefix .. 'all:rebuild:sumc', prefix .. 'all:new:sumc')
end

local empty = 0
if left == 0 and redis.call('EXISTS', prefix .. 'all:count') == 0 and redis.call('EXISTS', prefix .. 'all:pend') == 0 then
  redis.call('DEL', KEYS[2], KEYS[3])
  empty = 1
end
return {deleted, empty}
