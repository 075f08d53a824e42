-- Holds claimed messages whose eta lies ahead: each stays in kombu's
-- unacked (visible to and recoverable by Python tooling) and joins its
-- queue's delayed set, scored by eta; its unacked_index score becomes
-- eta + grace - visibility timeout, so no sweep restores it before its eta
-- (plus grace) while nobody has to renew it. The claim does not count as a
-- delivery.
--
-- ARGV[5] grace (seconds), then per message: token, delivery tag, queue,
-- eta in unix seconds.
-- Returns one integer per message: 1 held, 0 the lease was lost.

local grace = tonumber(ARGV[5])
local out = {}
for i = 6, #ARGV, 4 do
  local token, tag, queue, eta = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local dl = holder(tag, token)
  if not dl then
    out[#out + 1] = 0
  else
    local score = fmt(math.ceil(tonumber(eta) + grace - VT))
    redis.call('ZADD', K_INDEX, score, tag)
    write_record(tag, '0', score, math.max(dl - 1, 0))
    redis.call('ZADD', delayed_key(queue), eta, tag)
    out[#out + 1] = 1
  end
end
return out
