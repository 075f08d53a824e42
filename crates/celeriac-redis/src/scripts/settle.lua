-- Settles attempts, each fenced by its token, each with its result stored
-- in the same atomic step.
--
-- ARGV[5..]: 11 fields per settlement: kind, token, result key, result
-- expiry in ms, result payload ('' for none), then by kind:
--   'a' ack:         (unused x6)
--   'r' retry:       next kind ('r' | 'd'), next key, next tag, next eta,
--                    next unacked_index score, next value (as publish.lua)
--   'l' release:     list key, redelivered envelope (unused x4)
--   'd' dead letter: dead-letter metadata JSON (unused x5)
--
-- Returns one integer per settlement: 1 settled, 0 the lease is not held.

local out = {}
local i = 5
while i <= #ARGV do
  local kind, token = ARGV[i], ARGV[i + 1]
  local tag, dl = holder(token)
  if not tag then
    out[#out + 1] = 0
  else
    if kind == 'l' then
      -- Back to the front of its list, as kombu's restore does; the record
      -- keeps the delivery count for the next claim.
      forget(tag, token)
      write_record(tag, '0', '0', dl)
      redis.call('RPUSH', ARGV[i + 5], ARGV[i + 6])
    elseif kind == 'd' then
      local value = redis.call('HGET', K_UNACKED, tag) or ''
      redis.call('RPUSH', K_DEAD, ARGV[i + 5] .. '\n' .. value)
      forget(tag, token)
    else
      forget(tag, token)
      if kind == 'r' then
        put(ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], ARGV[i + 9], ARGV[i + 10])
      end
    end
    if ARGV[i + 4] ~= '' then
      celeriac_store_result(ARGV[i + 2], ARGV[i + 4], tonumber(ARGV[i + 3]))
    end
    out[#out + 1] = 1
  end
  i = i + 11
end
return out
