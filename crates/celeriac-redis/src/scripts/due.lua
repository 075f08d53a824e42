-- Lists leases that have ended: unacked_index entries scored below
-- now - visibility timeout, oldest first, with their unacked values.
--
-- ARGV[5] the most to return.
-- Returns {tag, score, value ('' when missing), ...}.

local t = now()
local due = redis.call('ZRANGEBYSCORE', K_INDEX, '-inf', '(' .. fmt(t - VT),
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[5]))
local out = {}
for i = 1, #due, 2 do
  out[#out + 1] = due[i]
  out[#out + 1] = due[i + 1]
  out[#out + 1] = redis.call('HGET', K_UNACKED, due[i]) or ''
end
return out
