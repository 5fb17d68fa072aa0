-- Fold one stream's closed minute buckets into their hour buckets, closed hours into their days
-- (tiers/hot.py `compact`; the module docstring explains the folded mark).
-- KEYS[1] any key of the stream (routes the call).
-- ARGV: stream prefix, now, after (how long a bucket stays closed before it is folded), budget
-- (zset members read, the destination's included; a step folds at least one finer bucket).
-- A step unions the next finer buckets from the mark on into the bucket's zsets and raises the
-- mark past them, atomically; a day folds an hour only once the hour is folded whole. Min and
-- max zsets come out whole (a key counted once gets its sum: hot_ingest.lua may omit it).
-- Returns {more (1: budget spent, call again), members read, {granularity, start, new mark, ...}}.
-- Each step also folds the pending all-time increments first (runs after hot_alltime_fold.lua).
-- Exact sums (hot_pairs.lua): minutes whose sums are pairs (a sumc zset) fold into their hour per
-- member, as pair additions, each counting PAIR_COST members against the budget (Lua per member
-- costs more than a ZUNIONSTORE); an hour with pairs is never folded into its day (that would be
-- Lua per member over a whole hour), nor any hour into a day holding pairs (late events): its
-- day's mark stops there, reads take the hours.
local PAIR_COST = 4
local MAX_SOURCES = 500
local AGGS = {'count', 'sum', 'min', 'max'}
local UNION = {count = 'SUM', sum = 'SUM', min = 'MIN', max = 'MAX'}
local WIDTH = {['1m'] = 60000, ['1h'] = 3600000, ['1d'] = 86400000}
local FINER = {['1h'] = '1m', ['1d'] = '1h'}

local prefix, now, after, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local spent = 0
local moved = {}

local function ms(x)
  return string.format('%.0f', x)
end

local function size(zp)
  local n = 0
  for _, agg in ipairs(AGGS) do n = n + redis.call('ZCARD', zp .. agg) end
  return n
end

-- The finer buckets of g in [lo, hi), in time order; whole = folded whole (minutes always are). A
-- lost bucket (tiers/hot_expiry.py: in the index without its keys, or in the 'lost' zset) is
-- never whole: folding stops below it, so reads still meet it and report it.
local function sources(g, lo, hi)
  local out = {}
  local gone = {}
  for _, start in ipairs(redis.call('ZRANGEBYSCORE', prefix .. g .. ':lost', ms(lo), '(' .. ms(hi))) do
    gone[start] = true
  end
  for _, start in ipairs(redis.call('ZRANGEBYSCORE', prefix .. g .. ':buckets', ms(lo), '(' .. ms(hi))) do
    local zp = prefix .. g .. ':' .. start .. ':'
    local whole
    if g == '1m' then
      whole = redis.call('EXISTS', zp .. 'count') == 1
    else
      local mark = redis.call('GET', zp .. 'folded')
      whole = mark and tonumber(mark) >= tonumber(start) + WIDTH[g]
    end
    local pair = redis.call('EXISTS', zp .. 'sumc') == 1
    if pair and g == '1h' then whole = false end
    out[#out + 1] = {start = tonumber(start), zp = zp, whole = whole and not gone[start], pair = pair}
  end
  return out
end

-- dest's sum zset (its count standing for it while it has none) += each source's sums, per
-- member as pairs (low parts in the sumc zsets; sources: {sum zset, its sumc or nil}), by
-- hot_alltime_fold.lua's zpair_many (prepended: tiers/hot.py).
local function fold_pairs(dest, sources, exp)
  local dsum, dcomp = dest .. 'sum', dest .. 'sumc'
  if redis.call('EXISTS', dsum) == 0 and redis.call('EXISTS', dest .. 'count') == 1 then
    redis.call('ZUNIONSTORE', dsum, 1, dest .. 'count')
  end
  if redis.call('EXISTS', dcomp) == 0 then redis.call('ZADD', dcomp, 0, PAIR_MARK) end
  for _, src in ipairs(sources) do
    local rows = redis.call('ZRANGE', src.sum, 0, -1, 'WITHSCORES')
    local by_member = {}
    if src.comp then
      local c = redis.call('ZRANGE', src.comp, 0, -1, 'WITHSCORES')
      for i = 1, #c, 2 do by_member[c[i]] = tonumber(c[i + 1]) end
    end
    local keys, sums, lows = {}, {}, {}
    for i = 1, #rows, 2 do
      local n = #keys + 1
      keys[n], sums[n], lows[n] = rows[i], rows[i + 1], by_member[rows[i]] or 0
    end
    zpair_many(dsum, dcomp, keys, sums, lows, #keys)
  end
  if exp > 0 then
    redis.call('PEXPIREAT', dsum, exp)
    redis.call('PEXPIREAT', dcomp, exp)
  end
end

-- One step for bucket (g, start) whose mark is below its end.
local function fold(g, start, mark)
  local zp = prefix .. g .. ':' .. start .. ':'
  local e = tonumber(start) + WIDTH[g]
  local src = sources(FINER[g], mark, e)
  local cost = size(zp)
  local n, new_mark = 0, e
  local pair = redis.call('EXISTS', zp .. 'sumc') == 1
  for i, s in ipairs(src) do
    local c = size(s.zp)
    if s.pair or pair then c = c * PAIR_COST end
    -- a day with pairs (late events) folds no more hours: that would be Lua per member over an hour
    if not s.whole or (g == '1d' and pair) or (n > 0 and (spent + cost + c > budget or n >= MAX_SOURCES)) then
      new_mark = s.start
      break
    end
    cost, n = cost + c, i
    pair = pair or s.pair
  end
  if n > 0 then
    local exp = redis.call('PEXPIRETIME', zp .. 'folded')
    local parts, sums, once = {zp}, {}, {}
    for i = 1, n do parts[i + 1] = src[i].zp end
    -- a bucket without a sum zset has every sum equal to its count; min and max zsets may omit
    -- the keys counted once (their sum is both): union those in too
    local all_counts = true
    for i, part in ipairs(parts) do
      sums[i] = part .. 'sum'
      if redis.call('EXISTS', sums[i]) == 0 then
        sums[i] = part .. 'count'
      else
        all_counts = false
      end
      once[i] = prefix .. 'tmp:fold:' .. i
      redis.call('ZDIFFSTORE', once[i], 2, sums[i], part .. 'min')
    end
    if pair then  -- sums as pairs, per member (sum first: it may read the old count)
      local pairs_src = {}
      for i = 2, #parts do
        local comp = parts[i] .. 'sumc'
        if redis.call('EXISTS', comp) == 0 then comp = nil end
        pairs_src[#pairs_src + 1] = {sum = sums[i], comp = comp}
      end
      fold_pairs(zp, pairs_src, exp)
    end
    for _, agg in ipairs({'sum', 'count', 'min', 'max'}) do  -- sum first: it may read the old count
      if agg ~= 'sum' or not (all_counts or pair) then
        local args = {}
        for i, part in ipairs(parts) do args[i] = agg == 'sum' and sums[i] or part .. agg end
        if agg == 'min' or agg == 'max' then
          for i = 1, #once do args[#args + 1] = once[i] end
        end
        local keys = #args
        args[keys + 1], args[keys + 2] = 'AGGREGATE', UNION[agg]
        redis.call('ZUNIONSTORE', zp .. agg, keys, unpack(args))
        if exp > 0 then redis.call('PEXPIREAT', zp .. agg, exp) end
      end
    end
    redis.call('DEL', unpack(once))
  end
  spent = spent + cost
  if new_mark ~= mark then
    redis.call('SET', zp .. 'folded', ms(new_mark), 'KEEPTTL')
    moved[#moved + 1] = g
    moved[#moved + 1] = start
    moved[#moved + 1] = ms(new_mark)
  end
end

fold_alltime(prefix)  -- the all-time leaderboards' pending increments (hot_alltime_fold.lua)
for _, g in ipairs({'1h', '1d'}) do
  for _, start in ipairs(redis.call('ZRANGEBYSCORE', prefix .. g .. ':buckets', '-inf', now - WIDTH[g] - after)) do
    local mark = redis.call('GET', prefix .. g .. ':' .. start .. ':folded')
    -- repeat: a step may stop at the budget, and one bucket may need many steps
    while mark and tonumber(mark) < tonumber(start) + WIDTH[g] do
      if spent >= budget then
        return {1, spent, moved}
      end
      local before = tonumber(mark)
      fold(g, start, before)
      mark = redis.call('GET', prefix .. g .. ':' .. start .. ':folded')
      if tonumber(mark) == before then break end  -- waits for a finer bucket (not folded whole)
    end
  end
end
return {0, spent, moved}
