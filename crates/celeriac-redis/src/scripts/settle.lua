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

-- The fencing check of every settlement, with three reads for the whole
-- batch (as holder() in common.lua checks one): the token's tag, the
-- tag's record, the tag's unacked_index score.
local want = {}
for i = 5, #ARGV, 11 do want[#want + 1] = ARGV[i + 1] end
local held_tags = redis.call('HMGET', K_TOKENS, unpack(want))
local known = {}
for j = 1, #want do
  if held_tags[j] then known[#known + 1] = held_tags[j] end
end
local recs, scores = {}, {}
if #known > 0 then
  local r = redis.call('HMGET', K_ATTEMPTS, unpack(known))
  local z = redis.call('ZMSCORE', K_INDEX, unpack(known))
  for j = 1, #known do
    recs[known[j]], scores[known[j]] = r[j] or false, z[j] or false
  end
end

local out = {}
local tags, tokens, records = {}, {}, {}
local settled = {}
local i = 5
while i <= #ARGV do
  local kind, token = ARGV[i], ARGV[i + 1]
  local tag, dl = held_tags[(i - 5) / 11 + 1], nil
  if tag then
    local rec, s = recs[tag], scores[tag]
    local tok, score, d
    if rec then tok, score, d = string.match(rec, '^(%S+) (%S+) (%d+)$') end
    if tok == token and s and tonumber(s) == tonumber(score) then
      dl = tonumber(d)
    else
      tag = nil
    end
  end
  if not tag or settled[tag] then
    -- Not held (or settled earlier in this batch): forget the token.
    if not tag then tokens[#tokens + 1] = token end
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
  if #records > 0 then redis.call('HSET', K_ATTEMPTS, unpack(records)) end
end
if #tokens > 0 then redis.call('HDEL', K_TOKENS, unpack(tokens)) end
return out
