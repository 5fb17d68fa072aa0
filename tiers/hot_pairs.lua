-- Exact sums in the hot tier (prepended to every hot script; tiers/hot_sums.py is the design).
-- A key's sum is a pair hi + lo: hi, the score of the sum zset, is the float nearest the pair;
-- lo (|lo| <= ulp(hi) / 2) sits in the compensation zset next to it (<zp>sumc, win:...:c,
-- all:sumc, total:sumc), only where it is not 0. A compensation zset also marks its sum zset
-- "inexact" (some value off the grid of hot_sums.GRID: a plain union of such zsets rounds):
-- it always holds PAIR_MARK, scored by the largest |lo| it ever held (the threshold
-- algorithm's bound), so it exists even while every lo is 0.
local PAIR_MARK = '\255'  -- never a key: not UTF-8

-- a + b = s + e exactly (Knuth's TwoSum; float64 in Redis's Lua).
local function two_sum(a, b)
  local s = a + b
  local bb = s - a
  return s, (a - (s - bb)) + (b - bb)
end

-- (h1 + l1) + (h2 + l2) as a normalised pair (hi, lo): error ~eps^2 of the terms.
local function pair_add(h1, l1, h2, l2)
  local s, e = two_sum(h1, h2)
  return two_sum(s, (l1 + l2) + e)
end

-- The compensation zset of sum zset `sum` (nil for a count zset standing for the sums).
local function comp_of(sum)
  if string.sub(sum, -3) == 'sum' then return sum .. 'c' end
  return nil
end
