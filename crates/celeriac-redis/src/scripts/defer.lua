-- Holds claimed messages whose eta lies ahead: each stays in kombu's
-- unacked (visible to and recoverable by Python tooling) under its attempt
-- tag and joins its queue's delayed set, scored by eta; its unacked_index
-- score becomes eta + grace - visibility timeout, so no sweep restores it
-- before its eta (plus grace) while nobody has to renew it. The claim that
-- found it early does not count as a delivery.
--
-- ARGV[5] grace (seconds), then per message: token, the envelope's
-- delivery tag when the claim counted a redelivery ('' otherwise), queue,
-- eta in unix seconds.
-- Returns one integer per message: 1 held, 0 the lease was lost.

local grace = tonumber(ARGV[5])
local out = {}
for i = 6, #ARGV, 4 do
  local tag = holder(ARGV[i])
  local etag, queue, eta = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if not tag then
    out[#out + 1] = 0
  else
    local score = fmt(math.ceil(tonumber(eta) + grace - VT))
    redis.call('ZADD', K_INDEX, score, tag)
    redis.call('ZADD', delayed_key(queue), eta, tag)
    if etag ~= '' then
      local key = deliveries_key(etag)
      if tonumber(redis.call('GET', key) or '0') > 1 then redis.call('DECR', key) end
    end
    out[#out + 1] = 1
  end
end
return out
