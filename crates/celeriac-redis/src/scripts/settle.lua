-- Settles attempts, each fenced by its attempt tag, each with its result
-- stored in the same atomic step. Many settlements of one handle are
-- batched into one call; the removals are written with one command per key
-- at the end.
--
-- ARGV[5..]: per settlement: kind, token, the envelope's delivery tag when
-- the message was delivered more than once ('' otherwise: no counter to
-- delete); when the kind is upper case (a result is stored), result key,
-- result expiry in ms, result payload; then by kind:
--   'a' ack:         nothing
--   'r' retry:       next kind ('r' | 'd'), next key, next tag, next eta,
--                    next unacked_index score, next value (as publish.lua)
--   'l' release:     list key, redelivered envelope
--   'd' dead letter: dead-letter metadata JSON
--
-- Returns one integer per settlement: 1 settled, 0 the lease is not held.

local EXTRA = {a = 0, r = 6, l = 2, d = 1}

-- Where each settlement starts, and its attempt tag.
local starts, want = {}, {}
local i = 5
while i <= #ARGV do
  local kind = ARGV[i]
  local lower = string.lower(kind)
  local extra = EXTRA[lower]
  if not extra then return redis.error_reply('unknown settlement kind ' .. kind) end
  starts[#starts + 1] = i
  want[#want + 1] = attempt_tag(ARGV[i + 1])
  i = i + 3 + (kind ~= lower and 3 or 0) + extra
end
if #want == 0 then return {} end

-- The fencing check of every settlement (as holder() in common.lua checks
-- one), with one read for the whole batch.
local scores = redis.call('ZMSCORE', K_INDEX, unpack(want))

local out = {}
local tags, counters = {}, {}
local settled = {}
for j, at in ipairs(starts) do
  local kind, etag = ARGV[at], ARGV[at + 2]
  local tag = want[j]
  local lower = string.lower(kind)
  if not scores[j] or settled[tag] then
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
      -- Back to the front of its list, as kombu's restore does, marked
      -- redelivered; its delivery counter stays for the next claim.
      redis.call('RPUSH', ARGV[x], ARGV[x + 1])
    elseif lower == 'r' then
      put(ARGV[x], ARGV[x + 1], ARGV[x + 2], ARGV[x + 3], ARGV[x + 4], ARGV[x + 5])
    end
    if lower ~= 'l' and etag ~= '' then counters[#counters + 1] = deliveries_key(etag) end
    settled[tag] = true
    tags[#tags + 1] = tag
    out[#out + 1] = 1
  end
end
if #tags > 0 then
  redis.call('ZREM', K_INDEX, unpack(tags))
  redis.call('HDEL', K_UNACKED, unpack(tags))
  if #counters > 0 then redis.call('DEL', unpack(counters)) end
end
return out
