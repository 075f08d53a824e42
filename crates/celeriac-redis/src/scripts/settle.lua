-- Settles attempts, each fenced by its token, each with its result stored
-- in the same atomic step. Many settlements of one handle are batched into
-- one call; the removals are written with one command per key at the end.
--
-- ARGV[5..]: per settlement: kind, token, delivery tag; when the kind is
-- upper case (a result is stored), result key, result expiry in ms, result
-- payload; then by kind:
--   'a' ack:         nothing
--   'r' retry:       next kind ('r' | 'd'), next key, next tag, next eta,
--                    next unacked_index score, next value (as publish.lua)
--   'l' release:     list key, redelivered envelope
--   'd' dead letter: dead-letter metadata JSON
--
-- Returns one integer per settlement: 1 settled, 0 the lease is not held.

local EXTRA = {a = 0, r = 6, l = 2, d = 1}

-- Where each settlement starts, and its tag.
local starts, want = {}, {}
local i = 5
while i <= #ARGV do
  local kind = ARGV[i]
  local lower = string.lower(kind)
  local extra = EXTRA[lower]
  if not extra then return redis.error_reply('unknown settlement kind ' .. kind) end
  starts[#starts + 1] = i
  want[#want + 1] = ARGV[i + 2]
  i = i + 3 + (kind ~= lower and 3 or 0) + extra
end
if #want == 0 then return {} end

-- The fencing check of every settlement (as holder() in common.lua checks
-- one), with two reads for the whole batch: the tags' records and their
-- unacked_index scores.
local recs = redis.call('HMGET', K_ATTEMPTS, unpack(want))
local scores = redis.call('ZMSCORE', K_INDEX, unpack(want))

local out = {}
local tags, records = {}, {}
local settled = {}
for j, at in ipairs(starts) do
  local kind, token, tag = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local lower = string.lower(kind)
  local rec, s = recs[j], scores[j]
  local dl
  if rec and s and not settled[tag] then
    local tok, score, d = string.match(rec, '^(%S+) (%S+) (%d+)$')
    if tok == token and (s == score or tonumber(s) == tonumber(score)) then
      dl = d
    end
  end
  if not dl then
    out[#out + 1] = 0
  else
    local x = at + 3
    if kind ~= lower then
      celeriac_store_result(ARGV[x], ARGV[x + 2], tonumber(ARGV[x + 1]))
      x = x + 3
    end
    if lower == 'd' then
      local value = redis.call('HGET', K_UNACKED, tag) or ''
      redis.call('RPUSH', K_DEAD, ARGV[x] .. '\n' .. value)
    elseif lower == 'l' then
      -- Back to the front of its list, as kombu's restore does; the record
      -- keeps the delivery count for the next claim.
      records[#records + 1] = tag
      records[#records + 1] = '0 0 ' .. dl
      redis.call('RPUSH', ARGV[x], ARGV[x + 1])
    elseif lower == 'r' then
      put(ARGV[x], ARGV[x + 1], ARGV[x + 2], ARGV[x + 3], ARGV[x + 4], ARGV[x + 5])
    end
    settled[tag] = true
    tags[#tags + 1] = tag
    out[#out + 1] = 1
  end
end
if #tags > 0 then
  redis.call('ZREM', K_INDEX, unpack(tags))
  redis.call('HDEL', K_UNACKED, unpack(tags))
  redis.call('HDEL', K_ATTEMPTS, unpack(tags))
  if #records > 0 then redis.call('HSET', K_ATTEMPTS, unpack(records)) end
end
return out
