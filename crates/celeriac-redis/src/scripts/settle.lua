-- Settles attempts, each fenced by its token, each with its result stored
-- in the same atomic step. Many settlements of one handle are batched into
-- one call; the removals are written with one command per key at the end.
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
local tags, tokens, records = {}, {}, {}
local settled = {}
local i = 5
while i <= #ARGV do
  local kind, token = ARGV[i], ARGV[i + 1]
  local tag, dl = holder(token)
  if not tag or settled[tag] then
    out[#out + 1] = 0
  else
    if kind == 'd' then
      local value = redis.call('HGET', K_UNACKED, tag) or ''
      redis.call('RPUSH', K_DEAD, ARGV[i + 5] .. '\n' .. value)
    end
    settled[tag] = true
    tags[#tags + 1] = tag
    tokens[#tokens + 1] = token
    if kind == 'l' then
      -- Back to the front of its list, as kombu's restore does; the record
      -- keeps the delivery count for the next claim.
      records[#records + 1] = tag
      records[#records + 1] = '0 0 ' .. dl
      redis.call('RPUSH', ARGV[i + 5], ARGV[i + 6])
    elseif kind == 'r' then
      put(ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], ARGV[i + 9], ARGV[i + 10])
    end
    if ARGV[i + 4] ~= '' then
      celeriac_store_result(ARGV[i + 2], ARGV[i + 4], tonumber(ARGV[i + 3]))
    end
    out[#out + 1] = 1
  end
  i = i + 11
end
if #tags > 0 then
  redis.call('ZREM', K_INDEX, unpack(tags))
  redis.call('HDEL', K_UNACKED, unpack(tags))
  redis.call('HDEL', K_ATTEMPTS, unpack(tags))
  redis.call('HDEL', K_TOKENS, unpack(tokens))
  if #records > 0 then redis.call('HSET', K_ATTEMPTS, unpack(records)) end
end
return out
