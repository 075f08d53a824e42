-- Shared by every celeriac script (prepended to each one).
--
-- KEYS: 1 unacked, 2 unacked_index, 3 celeriac.attempts, 4 celeriac.token,
--       5 celeriac.dead, 6 celeriac.revoked, 7 celeriac.queues
-- ARGV: 1 global_keyprefix, 2 sep, 3 priority steps "0,3,6,9", 4 visibility
--       timeout in seconds; each script's own arguments follow from ARGV[5].
--
-- An attempt record (celeriac.attempts, keyed by delivery tag) is
-- "<token> <score> <deliveries>": the token of the attempt holding the
-- message ("0" when none does), the unacked_index score written with it,
-- and how many times the message was delivered. An attempt holds its
-- message while the record names its token AND unacked_index still holds
-- the score it wrote: a restore (by any kombu or celeriac sweep) removes the
-- score, and a claim by anyone else writes another.
--
-- Scores follow kombu: unacked_index holds "receipt time"; kombu restores
-- an entry once score < now - visibility_timeout. celeriac writes
-- lease end - visibility_timeout, so every sweep restores a message exactly
-- when its lease ends. celeriac's scores are whole seconds, rounded up (a
-- lease ends up to a second late, never early): Redis keeps a small zset
-- as a listpack, where it parses every fractional score on each insert,
-- and whole numbers are stored as integers that need no parsing; that
-- makes a claim several times cheaper.

local K_UNACKED, K_INDEX, K_ATTEMPTS = KEYS[1], KEYS[2], KEYS[3]
local K_SEQ, K_DEAD, K_REVOKED, K_QUEUES = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local PREFIX, SEP, VT = ARGV[1], ARGV[2], tonumber(ARGV[4])
local STEPS = {}
for s in string.gmatch(ARGV[3], '%d+') do STEPS[#STEPS + 1] = tonumber(s) end

local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x)
  return string.format('%.17g', x)
end

local function list_key(queue, step)
  if step == 0 then return PREFIX .. queue end
  return PREFIX .. queue .. SEP .. step
end

local function delayed_key(queue)
  return PREFIX .. 'celeriac.delayed.' .. queue
end

-- A list that fetches waiting on the queue watch (with BLMOVE, as they
-- watch the queue's lists): a push wakes them to look at the delayed set
-- again; every claim empties it.
local function wake_key(queue)
  return PREFIX .. 'celeriac.wake.' .. queue
end

-- Returns token, score, deliveries of a tag's record, or nil.
local function read_record(tag)
  local rec = redis.call('HGET', K_ATTEMPTS, tag)
  if not rec then return nil end
  local tok, score, dl = string.match(rec, '^(%S+) (%S+) (%d+)$')
  if not tok then return nil end
  return tok, score, tonumber(dl)
end

local function write_record(tag, token, score, deliveries)
  redis.call('HSET', K_ATTEMPTS, tag, token .. ' ' .. score .. ' ' .. deliveries)
end

-- Returns the deliveries of the message `tag` when the attempt `token`
-- holds it, or nil. (The worker that claimed a message remembers its tag
-- with its token, so a fencing check reads only the tag's own entries.)
local function holder(tag, token)
  local tok, score, dl = read_record(tag)
  if tok == token then
    local s = redis.call('ZSCORE', K_INDEX, tag)
    if s and (s == score or tonumber(s) == tonumber(score)) then
      return dl
    end
  end
  return nil
end

-- Pushes values onto the left of a list (publish order is kept: the first
-- value is consumed first), in chunks that Lua's unpack can take.
local function lpush_all(key, values, from, to)
  local i = from
  while i <= to do
    local j = math.min(i + 999, to)
    redis.call('LPUSH', key, unpack(values, i, j))
    i = j + 1
  end
end

-- Publishes one prepared message: kind 'r' (ready: LPUSH to the list key
-- `key`) or 'd' (delayed: `key` is the delayed set, `value` the unacked
-- value, held in unacked until `eta`).
local function put(kind, key, tag, eta, index_score, value)
  if kind == 'd' then
    redis.call('HSET', K_UNACKED, tag, value)
    redis.call('ZADD', K_INDEX, index_score, tag)
    local _, _, dl = read_record(tag)
    write_record(tag, '0', index_score, dl or 0)
    redis.call('ZADD', key, eta, tag)
    local q = string.sub(key, #PREFIX + #'celeriac.delayed.' + 1)
    redis.call('LPUSH', wake_key(q), '1')
  else
    redis.call('LPUSH', key, value)
  end
end

