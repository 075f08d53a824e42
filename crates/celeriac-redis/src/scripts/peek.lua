-- Returns the unacked value of each held attempt ('' when not held).
--
-- ARGV[5..]: pairs (token, delivery tag).

local out = {}
for i = 5, #ARGV, 2 do
  local tag = ARGV[i + 1]
  local held = holder(tag, ARGV[i])
  out[#out + 1] = held and (redis.call('HGET', K_UNACKED, tag) or '') or ''
end
return out
