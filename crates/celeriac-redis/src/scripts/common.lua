-- Shared by every celeriac script (prepended to each one).
--
-- KEYS: 1 unacked, 2 unacked_index, 3 celeriac.token, 4 celeriac.dead,
--       5 celeriac.revoked, 6 celeriac.queues
-- ARGV: 1 global_keyprefix, 2 sep, 3 priority steps "0,3,6,9", 4 visibility
--       timeout in seconds; each script's own arguments follow from ARGV[5].
--
-- Attempts and fencing: every claim gives the message a tag of its own,
-- "celeriac:<token>" (the token counted by celeriac.token, never reused),
-- and files it under that tag in kombu's unacked hash and unacked_index.
-- The attempt holds its message exactly while unacked_index holds its tag:
-- an ack, a retry, a dead letter or a restore by any kombu or celeriac
-- sweep removes the tag, and the next claim files the message under a new
-- one. So a fencing check is one ZSCORE (ZMSCORE for a batch), and nothing
-- else is written per message. Python workers file what they claim under
-- the envelope's own delivery tag, which never looks like ours.
--
-- Deliveries: a first delivery counts 1 and writes nothing. A message that
-- comes back (kombu's redelivered mark on its envelope) is counted in
-- "celeriac.deliveries.<delivery tag>" (the envelope's tag, which every
-- restore keeps), a counter with an expiry that the attempt which ends the
-- message deletes.
--
-- Scores follow kombu: unacked_index holds "receipt time"; kombu restores
-- an entry once score < now - visibility_timeout. celeriac writes
-- lease end - visibility_timeout, so every sweep restores a message exactly
-- when its lease ends. celeriac's scores are whole seconds, rounded up (a
-- lease ends up to a second late, never early): Redis keeps a small zset
-- as a listpack, where it parses every fractional score on each insert,
-- and whole numbers are stored as integers that need no parsing; that
-- makes a claim several times cheaper.

local K_UNACKED, K_INDEX, K_SEQ = KEYS[1], KEYS[2], KEYS[3]
local K_DEAD, K_REVOKED, K_QUEUES = KEYS[4], KEYS[5], KEYS[6]
local PREFIX, SEP, VT = ARGV[1], ARGV[2], tonumber(ARGV[4])
local STEPS = {}
for s in string.gmatch(ARGV[3], '%d+') do STEPS[#STEPS + 1] = tonumber(s) end

-- How long a delivery counter outlives its last count (a week): a message
-- that a Python worker ends leaves its counter to expire.
local DELIVERIES_TTL = 604800

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

-- The tag an attempt files its message under (Keys::attempt_tag in Rust).
local function attempt_tag(token)
  return 'celeriac:' .. token
end

local function is_attempt_tag(tag)
  return string.sub(tag, 1, 9) == 'celeriac:'
end

local function deliveries_key(etag)
  return PREFIX .. 'celeriac.deliveries.' .. etag
end

-- Counts one more delivery of a message that came back; returns the count.
local function count_redelivery(etag)
  if not etag or etag == '' then return 2 end
  local key = deliveries_key(etag)
  local n = redis.call('INCR', key)
  if n == 1 then
    -- Its first delivery left no counter.
    n = redis.call('INCR', key)
  end
  redis.call('EXPIRE', key, DELIVERIES_TTL)
  return n
end

-- Returns the tag the attempt `token` holds, or nil when it lost it.
local function holder(token)
  local tag = attempt_tag(token)
  if redis.call('ZSCORE', K_INDEX, tag) then return tag end
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
    redis.call('ZADD', key, eta, tag)
    local q = string.sub(key, #PREFIX + #'celeriac.delayed.' + 1)
    redis.call('LPUSH', wake_key(q), '1')
  else
    redis.call('LPUSH', key, value)
  end
end

