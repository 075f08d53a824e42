-- Extends leases: each held one gets lease end = now + by, written as its
-- unacked_index score (so no kombu or celeriac sweep restores it before).
--
-- ARGV[5] by (seconds), then pairs (token, task id).
-- Returns one integer per lease: 1 held, 2 held but revoked, 0 lost.

local t = now()
local score = fmt(math.ceil(t + tonumber(ARGV[5]) - VT))
local any_revoked = redis.call('EXISTS', K_REVOKED) == 1
local out = {}
for i = 6, #ARGV, 2 do
  local tag = holder(ARGV[i])
  if not tag then
    out[#out + 1] = 0
  else
    redis.call('ZADD', K_INDEX, score, tag)
    if any_revoked and redis.call('ZSCORE', K_REVOKED, ARGV[i + 1]) then
      out[#out + 1] = 2
    else
      out[#out + 1] = 1
    end
  end
end
return out
