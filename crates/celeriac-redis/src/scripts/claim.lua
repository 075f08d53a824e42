-- Claims up to `max` messages atomically: each one popped is filed in
-- kombu's unacked hash and unacked_index under a new attempt tag (see
-- common.lua), as the value [envelope, "", queue] that kombu's restore
-- reads (the anonymous exchange routes it back to the queue it came from),
-- in this one script, so no message is ever out of both the list and
-- unacked. Nothing in the envelope is parsed, except the delivery tag of
-- one that carries kombu's redelivered mark (to count its deliveries).
--
-- ARGV[5] lease in seconds, ARGV[6] max, ARGV[7] arm key ('' for none),
-- ARGV[8..] queues, in the order to serve them (the caller rotates it for
-- fairness).
--
-- An armed claim (see arm.rs) waits in a pipeline behind a blocked BLMOVE
-- and runs the moment a message lands; it claims only if its arm key is
-- still there, and deletes it, so a fetch that stopped waiting can disarm
-- it with one DEL and know from the answer whether it already ran.
--
-- Order: due delayed messages first, then the lists by priority step
-- (step 0 first, as kombu's BRPOP key order), round robin across the queues
-- within a step.
--
-- Returns {n, next_due, restore_due, revoked, then n times: queue index
-- (1-based), token, deliveries, wrapped (1: payload is the unacked value
-- [envelope, exchange, routing_key]; 0: the envelope), payload}.
-- next_due (unix seconds, "" for none) is when something may become
-- claimable by itself (an eta, a lease end), given only when n is 0;
-- restore_due is 1 when some lease has ended and a sweep should run;
-- revoked is 1 when any revocation is remembered.

local lease = tonumber(ARGV[5])
local max = tonumber(ARGV[6])
local arm = ARGV[7]
if arm ~= '' and redis.call('DEL', arm) == 0 then
  return {0, '', 0, 0}
end
local queues = {}
for i = 8, #ARGV do queues[#queues + 1] = ARGV[i] end

for _, q in ipairs(queues) do redis.call('DEL', wake_key(q)) end

local t = now()
local score = fmt(math.ceil(t + lease - VT))

-- What the claim collects, written at the end with one command per key:
-- {queue index, wrapped, payload, unacked value, tag it leaves (delayed)}.
local taken = {}
local n = 0

-- Each queue's name as a JSON string, the routing key of its values.
local quoted = {}
for qi, q in ipairs(queues) do quoted[qi] = cjson.encode(q) end

-- An entry that is not a JSON object cannot go to unacked (a kombu sweep
-- would choke on it): it becomes a dead letter at once. (One that only
-- looks like an object goes to unacked; the worker dead-letters it when it
-- fails to decode.)
local function dead(queue, env, reason)
  local meta = cjson.encode({queue = queue, reason = reason, at = t, wrapped = false})
  redis.call('RPUSH', K_DEAD, meta .. '\n' .. env)
end

local find, match, byte = string.find, string.match, string.byte

local function take(qi, env)
  if byte(env, 1) ~= 123 and not find(env, '^%s*{') then
    return dead(queues[qi], env, 'the envelope is not a JSON object')
  end
  n = n + 1
  taken[n] = {qi, 0, env, '[' .. env .. ', "", ' .. quoted[qi] .. ']', false}
end

-- Whether an envelope carries kombu's redelivered mark (a plain search
-- for the rare `vered"`, then a look at what precedes it).
local function marked(env)
  local p = find(env, 'vered"', 1, true)
  while p do
    if string.sub(env, p - 7, p - 1) == '"redeli' then return true end
    p = find(env, 'vered"', p + 1, true)
  end
  return false
end

-- Finds in s, between init and limit, the first key `"name"` that the
-- anchored pattern `rest` matches right after; returns rest's captures.
-- `needle` is `name"`: a plain search for it (memchr) is many times
-- cheaper than an unanchored pattern, which runs the matcher at every
-- byte of the envelope (its base64 body included).
local function after_key(s, needle, rest, init, limit)
  local p = find(s, needle, init, true)
  while p and p <= limit do
    if byte(s, p - 1) == 34 then
      local a, b = match(s, rest, p + #needle)
      if a then return a, b end
    end
    p = find(s, needle, p + 1, true)
  end
  return nil
end

-- The envelope's properties.delivery_tag ('' when it has none): found by
-- searching, or by decoding the whole envelope when the search fails.
local function envelope_tag(s, wrapped)
  local a = after_key(s, 'properties"', '^%s*:%s*(){', 1, #s)
  if a then
    local b = match(s, '^%b{}()', a)
    if b then
      local tag = after_key(s, 'delivery_tag"', '^%s*:%s*"([^"\\]+)"', a, b - 1)
      if tag then return tag end
    end
  end
  local ok, obj = pcall(cjson.decode, s)
  if not ok or type(obj) ~= 'table' then return '' end
  if wrapped then obj = obj[1] end
  local p = type(obj) == 'table' and type(obj.properties) == 'table' and obj.properties or {}
  local tag = p.delivery_tag
  if type(tag) == 'number' then tag = tostring(tag) end
  if type(tag) ~= 'string' then return '' end
  return tag
end

-- Delayed messages whose eta has come, still held (a stale member, whose
-- message was restored or settled meanwhile, is dropped). Each moves to a
-- tag of the attempt that claims it.
for qi, q in ipairs(queues) do
  if n >= max then break end
  local dk = delayed_key(q)
  local due = redis.call('ZRANGEBYSCORE', dk, '-inf', fmt(t), 'LIMIT', 0, max - n)
  for _, tag in ipairs(due) do
    redis.call('ZREM', dk, tag)
    local s = redis.call('ZSCORE', K_INDEX, tag)
    local value = redis.call('HGET', K_UNACKED, tag)
    if s and value then
      n = n + 1
      taken[n] = {qi, 1, value, value, tag}
    end
  end
end

for _, step in ipairs(STEPS) do
  if n >= max then break end
  if #queues == 1 then
    local envs = redis.call('RPOP', list_key(queues[1], step), max - n)
    if envs then
      for _, env in ipairs(envs) do take(1, env) end
    end
  else
    local active = {}
    for qi = 1, #queues do active[qi] = qi end
    while n < max and #active > 0 do
      local still = {}
      for _, qi in ipairs(active) do
        if n >= max then break end
        local env = redis.call('RPOP', list_key(queues[qi], step))
        if env then
          take(qi, env)
          still[#still + 1] = qi
        end
      end
      active = still
    end
  end
end

local out = {}
if n > 0 then
  local first = redis.call('INCRBY', K_SEQ, n) - n
  local unacked, index, left = {}, {}, {}
  for i = 1, n do
    local e = taken[i]
    local token = first + i
    local tag = attempt_tag(token)
    unacked[#unacked + 1] = tag
    unacked[#unacked + 1] = e[4]
    index[#index + 1] = score
    index[#index + 1] = tag
    if e[5] then left[#left + 1] = e[5] end
    local dl = 1
    if marked(e[3]) then dl = count_redelivery(envelope_tag(e[3], e[2] == 1)) end
    out[#out + 1] = e[1]
    out[#out + 1] = token
    out[#out + 1] = dl
    out[#out + 1] = e[2]
    out[#out + 1] = e[3]
  end
  local function each(cmd, key, args)
    local i = 1
    while i <= #args do
      local j = math.min(i + 999, #args)
      redis.call(cmd, key, unpack(args, i, j))
      i = j + 1
    end
  end
  if #left > 0 then
    each('HDEL', K_UNACKED, left)
    each('ZREM', K_INDEX, left)
  end
  each('HSET', K_UNACKED, unacked)
  each('ZADD', K_INDEX, index)
end

local next_due = nil
local restore_due = 0
local first = redis.call('ZRANGE', K_INDEX, 0, 0, 'WITHSCORES')
if first[2] then
  local at = tonumber(first[2]) + VT
  if at <= t then restore_due = 1 end
  next_due = at
end
if n == 0 then
  for _, q in ipairs(queues) do
    local d = redis.call('ZRANGE', delayed_key(q), 0, 0, 'WITHSCORES')
    if d[2] then
      local at = tonumber(d[2])
      if not next_due or at < next_due then next_due = at end
    end
  end
end
local revoked = redis.call('EXISTS', K_REVOKED)
local head = {n, next_due and fmt(next_due) or '', restore_due, revoked}
for i = 1, #out do head[#head + 1] = out[i] end
return head
