-- Read one stream's hot aggregates over a cover, in one round trip (tiers/hot.py `_query`).
-- KEYS[1] any key of the stream: it routes the call; every key used shares its hash tag.
-- ARGV: mode, stream prefix, window (0: off; else top-K and rank by count or sum read runs of
-- buckets through their materialised unions, hot_window.lua, building new ones from at most this
-- many source members in all: the build budget), piece count, per piece (granularity, start ms, end
-- ms), then per mode:
--   keys | buckets: nothing            -> {members, count, sum, min, max} (score columns in chunks)
--   key | bucket_key: member           -> {count, sum, min, max} | {starts, count, sum, min, max}
--   topk: agg, k                       -> {members, scores, ordered (0: candidates, caller sorts)}
--   rank: agg, member, around          -> {total, score | false, rank | false, members, scores}
--   column: agg (count | sum), scores -> {members joined by NUL, scores joined by NUL | ''}
--   lists: agg (count | sum)[, head]   -> {zset names, their lowest scores, with head > 0 their
--                                         first head members and scores, best first (ZREVRANGE)}:
--                                         the zsets whose sum is the pieces' agg per key
--                                         (tiers/hot_ranked.py reads them)
-- Scores are returned as Redis formats them (exact); members in the tie order (value desc, key asc).
-- Exact sums (hot_pairs.lua, tiers/hot_sums.py): a bucket whose sums are pairs has a sumc zset.
-- One key's sums and the threshold candidates' totals add pairs here; a union of sums meeting
-- such a bucket is left to Python, atomically: topk (without the threshold), rank and column by
-- sum then return {'exact', sources} and keys a sixth element, sources (each source: {rows of one
-- sum zset, rows of its sumc zset}, NUL-joined; tiers/hot_sums.exact_union). lists also
-- returns each list's sumc zset ('' for none) and its largest |low part| (the TA's bound).
-- An hour or day bucket is read from its own zsets for [start, folded) and from its finer buckets
-- for the rest (see tiers/hot.py, Compaction); its totals are always whole. A bucket's min and max
-- zsets may omit the keys counted once in it (min = max = their sum), and it has no sum zset while
-- every key's sum is its count (hot_ingest.lua).
-- Lost buckets (tiers/hot_expiry.py): a bucket the index lists whose keys are gone (the safety TTL
-- fired; a script sees every key of a bucket expire at once), or one in the 'lost' zset (it fired
-- before a later write), cannot be read: every mode but buckets (the totals never expire) then
-- returns {'lost', {granularity, start, ...}} instead.
local CHUNK = 3000
local TPUT_MAX_CANDIDATES = 20000
local AGGS = {'count', 'sum', 'min', 'max'}
local UNION = {count = 'SUM', sum = 'SUM', min = 'MIN', max = 'MAX'}
local WIDTH = {['1m'] = 60000, ['1h'] = 3600000, ['1d'] = 86400000}
local FINER = {['1h'] = '1m', ['1d'] = '1h'}

local mode, prefix, use_window = ARGV[1], ARGV[2], ARGV[3] ~= '0'
if use_window then win_budget = tonumber(ARGV[3]) end
local npieces = tonumber(ARGV[4])
local arg0 = 5 + 3 * npieces

local function ms(x)
  return string.format('%.0f', x)
end

-- A bucket to read: its zsets' prefix, and which zset holds its sums.
local function entry(g, start, zp, top)
  local sum = zp .. 'sum'
  local comp = nil
  if redis.call('EXISTS', sum) == 0 then
    sum = zp .. 'count'
  elseif redis.call('EXISTS', zp .. 'sumc') == 1 then
    comp = zp .. 'sumc'
  end
  return {g = g, start = start, zp = zp, top = top, sum = sum, comp = comp}
end

-- The zset of one aggregate of bucket b.
local function zset(b, agg)
  if b.win then return b.win end
  return agg == 'sum' and b.sum or b.zp .. agg
end

-- The buckets the call reads (before window_runs), and whether none of them ever held a negative
-- value (their totals' min; computed on first need).
local read_buckets = {}
local nonneg = nil
local function all_nonneg()
  if nonneg == nil then
    nonneg = true
    for _, b in ipairs(read_buckets) do
      local m = redis.call('ZSCORE', prefix .. b.g .. ':total:min', b.start)
      if m and tonumber(m) < 0 then
        nonneg = false
        break
      end
    end
  end
  return nonneg
end

-- Whether a union of agg over bs must be exact in Python (some bucket's sums are pairs). final:
-- the answer is the union's order and values alone (topk, rank: the whole range is hot's): one
-- bucket's hi is its answer, and so is the float union of the hi parts when no bucket read holds
-- a negative value — every term is >= 0, so it is within (buckets + 1) x eps of the exact sum,
-- relatively (no cancellation; each |lo| <= ulp(hi) / 2), far inside the 1e-12 by which values
-- are equal (API.md): streams of positive decimals (prices, durations) rank as fast as before.
-- Not for partials (keys, column): the router may merge them with negative partials of other
-- pieces, where the low parts decide.
local function inexact(agg, bs, final)
  if agg ~= 'sum' or (final and #bs == 1) then return false end
  for _, b in ipairs(bs) do
    if b.comp and not b.win then return not (final and all_nonneg()) end
  end
  return false
end

-- The rows (member, score, ... as ZRANGE WITHSCORES gives them, joined by NUL: no Lua per member)
-- of every sum zset of bs and of its sumc zset (tiers/hot_sums.exact_union).
local function sources_of(bs)
  local out = {}
  for i, b in ipairs(bs) do
    local comp = ''
    if b.comp and not b.win then comp = table.concat(redis.call('ZRANGE', b.comp, 0, -1, 'WITHSCORES'), '\0') end
    out[i] = {table.concat(redis.call('ZRANGE', zset(b, 'sum'), 0, -1, 'WITHSCORES'), '\0'), comp}
  end
  return out
end

-- The lost buckets met by collect: granularity, start, ...
local lost = {}

-- Append the buckets of g in [lo, hi) to out, in time order, as {g, start, zp (their zsets'
-- prefix), top (the start of the piece's bucket they belong to)}. expand: the zsets that hold the
-- bucket's events (its own for [start, folded), the finer buckets' for the rest), else the bucket
-- (its totals).
local function collect(out, g, lo, hi, expand, top)
  local starts = redis.call('ZRANGEBYSCORE', prefix .. g .. ':buckets', ms(lo), '(' .. ms(hi))
  local gone = {}
  if expand and #starts > 0 then
    for _, start in ipairs(redis.call('ZRANGEBYSCORE', prefix .. g .. ':lost', ms(lo), '(' .. ms(hi))) do
      gone[start] = true
    end
  end
  for _, start in ipairs(starts) do
    local zp = prefix .. g .. ':' .. start .. ':'
    local mark = g ~= '1m' and expand and redis.call('GET', zp .. 'folded')
    if not expand then
      out[#out + 1] = {g = g, start = start, zp = zp, top = start}
    elseif gone[start] or (g == '1m' and redis.call('EXISTS', zp .. 'count') == 0) or (g ~= '1m' and not mark) then
      lost[#lost + 1] = g
      lost[#lost + 1] = start
    elseif g == '1m' then
      out[#out + 1] = entry(g, start, zp, top or start)
    else
      mark = tonumber(mark)
      local e = tonumber(start) + WIDTH[g]
      if mark > tonumber(start) and redis.call('EXISTS', zp .. 'count') == 1 then
        out[#out + 1] = entry(g, start, zp, top or start)
        out[#out].whole = mark >= e
      end
      if mark < e then collect(out, FINER[g], mark, e, true, top or start) end
    end
  end
end

local function buckets(expand)
  local out = {}
  for i = 0, npieces - 1 do
    collect(out, ARGV[5 + 3 * i], tonumber(ARGV[6 + 3 * i]), tonumber(ARGV[7 + 3 * i]), expand, nil)
  end
  return out
end

local function num(x)
  return string.format('%.17g', x)
end

-- Scratch zsets of the keys counted once in a bucket (scored by their sum), per bucket index.
local once = {}

local function once_of(i, b)
  if not once[i] then
    once[i] = prefix .. 'tmp:once:' .. i
    redis.call('ZDIFFSTORE', once[i], 2, b.sum, b.zp .. 'min')
  end
  return once[i]
end

-- ZUNIONSTORE of one aggregate's bucket zsets into a scratch key (deleted before returning); for
-- min and max, with the keys counted once in each bucket.
local function union(agg, bs)
  local dest = prefix .. 'tmp:' .. agg
  redis.call('DEL', dest)
  local sources = {}
  for i, b in ipairs(bs) do
    sources[#sources + 1] = zset(b, agg)
    if agg == 'min' or agg == 'max' then sources[#sources + 1] = once_of(i, b) end
  end
  for i = 1, #sources, CHUNK do
    local args, n = {dest}, 1
    for t = i, math.min(i + CHUNK - 1, #sources) do
      n = n + 1
      args[n] = sources[t]
    end
    args[n + 1], args[n + 2] = 'AGGREGATE', UNION[agg]
    redis.call('ZUNIONSTORE', dest, n, unpack(args, 1, n + 2))
  end
  return dest
end

local function cleanup()
  for _, agg in ipairs(AGGS) do redis.call('DEL', prefix .. 'tmp:' .. agg) end
  for _, key in pairs(once) do redis.call('DEL', key) end
end

-- Members at positions lo..hi (0-based) in the order value desc, member asc. Redis orders equal
-- scores by member descending in ZREVRANGE, so each score group is re-read in ascending order.
local function window(key, lo, hi)
  local head = redis.call('ZREVRANGE', key, lo, hi, 'WITHSCORES')
  local members, scores, n = {}, {}, 0
  local p, i = lo, 2
  while i <= #head do
    local s = head[i]
    local group_start = p
    if p == lo then
      group_start = redis.call('ZCOUNT', key, '(' .. s, '+inf')
    end
    local want = 0
    while i <= #head and head[i] == s do
      want = want + 1
      i = i + 2
    end
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, s, s, 'LIMIT', p - group_start, want)) do
      n = n + 1
      members[n], scores[n] = m, s
    end
    p = p + want
  end
  return members, scores
end

-- The zset of one aggregate over the buckets: the bucket's own count or sum when there is one,
-- else a union.
local function combined(agg, bs)
  if #bs == 1 and (agg == 'count' or agg == 'sum') then return zset(bs[1], agg) end
  return union(agg, bs)
end

-- Top k by a SUM of non-negative scores without a union (three-phase uniform threshold): the
-- k-th best sum of the per-bucket heads bounds the k-th total from below, so only a member
-- scoring at least bound / buckets somewhere can be in the top k; those get exact totals.
-- Returns candidate members and their totals (unordered), or nil when it would not save work.
local function tput(agg, bs, k)
  local keys = {}
  for i, b in ipairs(bs) do
    keys[i] = zset(b, agg)
    local low = redis.call('ZRANGE', keys[i], 0, 0, 'WITHSCORES')
    if low[2] and tonumber(low[2]) < 0 then return nil end
  end
  local partial, seen = {}, {}
  for _, key in ipairs(keys) do
    local head = redis.call('ZREVRANGE', key, 0, k - 1, 'WITHSCORES')
    for i = 1, #head, 2 do
      local m = head[i]
      if not partial[m] then
        seen[#seen + 1] = m
        partial[m] = 0
      end
      partial[m] = partial[m] + tonumber(head[i + 1])
    end
  end
  if #seen < k then return nil end
  local sums = {}
  for i, m in ipairs(seen) do sums[i] = partial[m] end
  table.sort(sums, function(a, b) return a > b end)
  -- a little below bound / buckets, so float rounding of the totals cannot drop a member
  local threshold = sums[k] / #keys * (1 - 1e-9)
  if threshold <= 0 then return nil end
  local members, is_member = {}, {}
  for _, key in ipairs(keys) do
    for _, m in ipairs(redis.call('ZREVRANGEBYSCORE', key, '+inf', threshold)) do
      if not is_member[m] then
        members[#members + 1] = m
        is_member[m] = true
      end
    end
    if #members > TPUT_MAX_CANDIDATES then return nil end
  end
  local totals, lows = {}, {}
  for i = 1, #members do totals[i], lows[i] = 0, 0 end
  for b, key in ipairs(keys) do
    local comp = agg == 'sum' and not bs[b].win and bs[b].comp
    for i = 1, #members, CHUNK do
      local j = math.min(i + CHUNK - 1, #members)
      local scores = redis.call('ZMSCORE', key, unpack(members, i, j))
      local cl = comp and redis.call('ZMSCORE', comp, unpack(members, i, j)) or {}
      for t = i, j do
        local sc = scores[t - i + 1]
        if sc then  -- as pairs (hot_pairs.lua): exact whatever the buckets' order
          totals[t], lows[t] = pair_add(totals[t], lows[t], tonumber(sc), tonumber(cl[t - i + 1] or 0))
        end
      end
    end
  end
  for i = 1, #totals do totals[i] = num(totals[i]) end
  return members, totals
end

local bs = buckets(mode ~= 'buckets')
for i, b in ipairs(bs) do read_buckets[i] = b end  -- a copy: window_runs rewrites bs
if #lost > 0 then return {'lost', lost} end
if use_window and (mode == 'topk' or mode == 'rank' or mode == 'lists' or mode == 'column') and (ARGV[arg0] == 'count' or ARGV[arg0] == 'sum') then
  bs = window_runs(prefix, bs, ARGV[arg0])
end

if mode == 'keys' then
  if #bs == 0 then return {{}, {}, {}, {}, {}} end
  local sets = {}
  local exact = inexact('sum', bs)
  for a, agg in ipairs(AGGS) do
    if agg == 'sum' and exact then sets[a] = combined('count', bs) else sets[a] = combined(agg, bs) end
  end
  local members = redis.call('ZRANGE', sets[1], 0, -1)
  local out = {members}
  for a = 1, #AGGS do
    local chunks = {}
    for i = 1, #members, CHUNK do
      chunks[#chunks + 1] = redis.call('ZMSCORE', sets[a], unpack(members, i, math.min(i + CHUNK - 1, #members)))
    end
    out[a + 1] = chunks
  end
  if exact then out[6] = sources_of(bs) end  -- Python replaces the sum column (exact_union)
  cleanup()
  return out
end

if mode == 'buckets' then
  local out = {{}, {}, {}, {}, {}, {}}
  for r, b in ipairs(bs) do
    out[1][r] = b.start
    for a, agg in ipairs(AGGS) do
      out[a + 1][r] = redis.call('ZSCORE', prefix .. b.g .. ':total:' .. agg, b.start)
    end
    out[6][r] = redis.call('ZSCORE', prefix .. b.g .. ':total:sumc', b.start) or '0'  -- low parts
  end
  return out
end

if mode == 'key' or mode == 'bucket_key' then
  local member = ARGV[arg0]
  local out = {{}, {}, {}, {}, {}, {}}
  local c, s, lo, hi = 0, 0, math.huge, -math.huge
  local sl = 0  -- the sum's low part (hot_pairs.lua)
  local top
  -- one row per piece bucket: its zsets' values merged (they are consecutive in bs)
  local function emit()
    if top and c > 0 then
      local r = #out[1] + 1
      out[1][r], out[2][r], out[3][r], out[4][r], out[5][r] = top, num(c), num(s), num(lo), num(hi)
      out[6][r] = num(sl)
    end
  end
  for _, b in ipairs(bs) do
    if mode == 'bucket_key' and b.top ~= top then
      emit()
      top, c, s, lo, hi, sl = b.top, 0, 0, math.huge, -math.huge, 0
    end
    local bc = redis.call('ZSCORE', b.zp .. 'count', member)
    if bc then
      local bs_ = tonumber(redis.call('ZSCORE', b.sum, member))
      local bl = b.comp and tonumber(redis.call('ZSCORE', b.comp, member) or 0) or 0
      c = c + tonumber(bc)
      s, sl = pair_add(s, sl, bs_, bl)
      -- counted once in the bucket: no min, max (they are its sum)
      lo = math.min(lo, tonumber(redis.call('ZSCORE', b.zp .. 'min', member) or bs_))
      hi = math.max(hi, tonumber(redis.call('ZSCORE', b.zp .. 'max', member) or bs_))
    end
  end
  if mode == 'bucket_key' then
    emit()
    return out
  end
  if c == 0 then return {} end
  return {num(c), num(s), num(lo), num(hi), num(sl)}
end

if mode == 'topk' then
  local agg, k = ARGV[arg0], tonumber(ARGV[arg0 + 1])
  if #bs == 0 or k <= 0 then return {{}, {}, 1} end
  if #bs > 1 and (agg == 'count' or agg == 'sum') then
    local members, totals = tput(agg, bs, k)
    if members then return {members, totals, 0} end
  end
  if inexact(agg, bs, true) then return {'exact', sources_of(bs)} end
  local members, scores = window(combined(agg, bs), 0, k - 1)
  cleanup()
  return {members, scores, 1}
end

-- One column: every member of the union of one aggregate's zsets (count | sum), joined by NUL,
-- and with scores '1' their scores (as Redis formats them) joined by NUL (tiers/hot_keys.py).
if mode == 'column' then
  local agg, with_scores = ARGV[arg0], ARGV[arg0 + 1] == '1'
  if #bs == 0 then return {'', ''} end
  if with_scores and inexact(agg, bs) then return {'exact', sources_of(bs)} end
  local key = combined(agg, bs)
  local out
  if with_scores then
    local rows = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    local members, scores = {}, {}
    for i = 1, #rows, 2 do
      members[#members + 1] = rows[i]
      scores[#scores + 1] = rows[i + 1]
    end
    out = {table.concat(members, '\0'), table.concat(scores, '\0')}
  else
    out = {table.concat(redis.call('ZRANGE', key, 0, -1), '\0'), ''}
  end
  cleanup()
  return out
end

if mode == 'lists' then
  local agg, head = ARGV[arg0], tonumber(ARGV[arg0 + 1] or 0)
  local names, lows, heads, comps, bounds = {}, {}, {}, {}, {}
  for i, b in ipairs(bs) do
    names[i] = zset(b, agg)
    comps[i], bounds[i] = '', '0'
    if agg == 'sum' and b.comp and not b.win then
      comps[i] = b.comp
      bounds[i] = redis.call('ZSCORE', b.comp, PAIR_MARK) or '0'
    end
    local low = redis.call('ZRANGE', names[i], 0, 0, 'WITHSCORES')
    lows[i] = low[2] or '0'
    if head > 0 then heads[i] = redis.call('ZREVRANGE', names[i], 0, head - 1, 'WITHSCORES') end
  end
  return {names, lows, heads, comps, bounds}
end

if mode == 'rank' then
  local agg, member, around = ARGV[arg0], ARGV[arg0 + 1], tonumber(ARGV[arg0 + 2])
  if #bs == 0 then return {0, false, false, {}, {}} end
  if inexact(agg, bs, true) then return {'exact', sources_of(bs)} end
  local key = combined(agg, bs)
  local total = redis.call('ZCARD', key)
  local score = redis.call('ZSCORE', key, member)
  if not score then
    cleanup()
    return {total, false, false, {}, {}}
  end
  local greater = redis.call('ZCOUNT', key, '(' .. score, '+inf')
  local less = redis.call('ZCOUNT', key, '-inf', '(' .. score)
  local at = greater + redis.call('ZRANK', key, member) - less
  local members, scores = window(key, math.max(0, at - around), at + around)
  cleanup()
  return {total, score, at + 1, members, scores}
end

return redis.error_reply('unknown mode ' .. tostring(mode))
