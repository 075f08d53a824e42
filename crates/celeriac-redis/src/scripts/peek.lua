-- Returns the unacked value of each held attempt ('' when not held).
--
-- ARGV[5..]: tokens.

local out = {}
for i = 5, #ARGV do
  local tag = holder(ARGV[i])
  out[#out + 1] = tag and (redis.call('HGET', K_UNACKED, tag) or '') or ''
end
return out
