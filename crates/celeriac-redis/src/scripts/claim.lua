-- Claims up to `max` messages atomically: each one popped is recorded in
-- kombu's unacked hash and unacked_index (exactly as kombu writes them) and
-- in celeriac's attempt record with a fresh fencing token, in this one
-- script, so no message is ever out of both the list and unacked.
--
-- ARGV[5] lease in seconds, ARGV[6] max, ARGV[7..] queues, in the order to
-- serve them (the caller rotates it for fairness).
--
-- Order: due delayed messages first, then the lists by priority step
-- (step 0 first, as kombu's BRPOP key order), round robin across the queues
-- within a step.
--
-- Returns {n, next_due, restore_due, revoked, then n times: queue index
-- (1-based), delivery tag, token, deliveries, wrapped (1: payload is the
-- unacked value [envelope, exchange, routing_key]; 0: the envelope), payload}.
-- next_due (unix seconds, "" for none) is when something may become
-- claimable by itself (an eta, a lease end), given only when n is 0;
-- restore_due is 1 when some lease has ended and a sweep should run;
-- revoked is 1 when any revocation is remembered.

local lease = tonumber(ARGV[5])
local max = tonumber(ARGV[6])
local queues = {}
for i = 7, #ARGV do queues[#queues + 1] = ARGV[i] end

for _, q in ipairs(queues) do redis.call('DEL', wake_key(q)) end

local t = now()
local score = fmt(math.ceil(t + lease - VT))

-- What the claim collects, written at the end with one command per key.
local taken = {}      -- {qi, tag, wrapped, payload, value (list entries only)}
local n = 0

-- An entry that is not a JSON object cannot go to unacked (a kombu sweep
-- would choke on it): it becomes a dead letter at once.
local function dead(queue, env, reason)
  local meta = cjson.encode({queue = queue, reason = reason, at = t, wrapped = false})
  redis.call('RPUSH', K_DEAD, meta .. '\n' .. env)
end

local find, match, byte = string.find, string.match, string.byte

-- Finds in s, between init and limit, the first key `"name"` that the
-- anchored pattern `rest` matches right after; returns rest's captures.
-- `needle` is `name"`: a plain search for it (memchr) is many times
-- cheaper than an unanchored pattern, which runs the matcher at every
-- byte of the envelope (its base64 body included); no substring is made.
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

-- Returns the first and last byte of the object held by the first key
-- `needle` (as in after_key) between init and limit.
local function object_at(s, needle, init, limit)
  local a = after_key(s, needle, '^%s*:%s*(){', init, limit)
  if not a then return nil end
  local b = match(s, '^%b{}()', a)
  if not b then return nil end
  return a, b - 1
end

local function take(qi, queue, env)
  local tag, ex, rk
  local p, pe = object_at(env, 'properties"', 1, #env)
  if p then
    tag = after_key(env, 'delivery_tag"', '^%s*:%s*"([^"\\]+)"', p, pe)
    local d, de = object_at(env, 'delivery_info"', p, pe)
    if d then
      -- Both kept with their quotes, as the unacked value holds them.
      ex = after_key(env, 'exchange"', '^%s*:%s*("[^"\\]*")', d, de)
      rk = after_key(env, 'routing_key"', '^%s*:%s*("[^"\\]+")', d, de)
    end
  end
  if not (tag and ex and rk) then
    -- The fast path did not find everything: read the envelope properly.
    if not string.find(env, '^%s*{') then
      return dead(queue, env, 'the envelope is not a JSON object')
    end
    local ok, obj = pcall(cjson.decode, env)
    if not ok or type(obj) ~= 'table' then
      return dead(queue, env, 'the envelope is not valid JSON')
    end
    local p = type(obj.properties) == 'table' and obj.properties or {}
    local di = type(p.delivery_info) == 'table' and p.delivery_info or {}
    tag = p.delivery_tag
    if type(tag) == 'number' then tag = tostring(tag) end
    if type(tag) ~= 'string' or tag == '' then tag = nil end
    ex = cjson.encode(type(di.exchange) == 'string' and di.exchange or '')
    local r = di.routing_key
    rk = cjson.encode((type(r) == 'string' and r ~= '') and r or queue)
  end
  n = n + 1
  taken[n] = {qi, tag or false, 0, env, '[' .. env .. ', ' .. ex .. ', ' .. rk .. ']'}
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

-- Delayed messages whose eta has come, still held (a stale member, whose
-- message was restored or settled meanwhile, is dropped).
for qi, q in ipairs(queues) do
  if n >= max then break end
  local dk = delayed_key(q)
  local due = redis.call('ZRANGEBYSCORE', dk, '-inf', fmt(t), 'LIMIT', 0, max - n)
  for _, tag in ipairs(due) do
    redis.call('ZREM', dk, tag)
    local tok, sc = read_record(tag)
    local s = redis.call('ZSCORE', K_INDEX, tag)
    local value = redis.call('HGET', K_UNACKED, tag)
    if tok == '0' and s and tonumber(s) == tonumber(sc) and value then
      n = n + 1
      taken[n] = {qi, tag, 1, value, false}
    end
  end
end

for _, step in ipairs(STEPS) do
  if n >= max then break end
  if #queues == 1 then
    local envs = redis.call('RPOP', list_key(queues[1], step), max - n)
    if envs then
      for _, env in ipairs(envs) do take(1, queues[1], env) end
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
          take(qi, queues[qi], env)
          still[#still + 1] = qi
        end
      end
      active = still
    end
  end
end

local out = {}
if n > 0 then
  -- Tags: a missing one, or one already in unacked or earlier in this
  -- batch (a producer that reused a tag), gets a generated one, so no
  -- backup overwrites another.
  local probe = {}
  for i = 1, n do
    local e = taken[i]
    if e[3] == 0 and e[2] then probe[#probe + 1] = e[2] end
  end
  local held = {}
  if #probe > 0 then
    local found = redis.call('HMGET', K_UNACKED, unpack(probe))
    for i = 1, #probe do
      if found[i] then held[probe[i]] = true end
    end
  end
  local first = redis.call('INCRBY', K_SEQ, n) - n
  local unacked, index, records = {}, {}, {}
  for i = 1, n do
    local e = taken[i]
    local tag, wrapped = e[2], e[3]
    if wrapped == 0 then
      if not tag or held[tag] then
        tag = 'celeriac-' .. redis.call('INCR', K_SEQ)
      end
      held[tag] = true
      unacked[#unacked + 1] = tag
      unacked[#unacked + 1] = e[5]
    end
    -- Only a message that was delivered before has a record (and then it
    -- carries kombu's redelivered mark, or sat in the delayed set).
    local dl = 1
    if wrapped == 1 or marked(e[4]) then
      local _, _, d = read_record(tag)
      dl = (d or 0) + 1
    end
    local token = first + i
    index[#index + 1] = score
    index[#index + 1] = tag
    records[#records + 1] = tag
    records[#records + 1] = token .. ' ' .. score .. (dl == 1 and ' 1' or (' ' .. dl))
    out[#out + 1] = e[1]
    out[#out + 1] = tag
    out[#out + 1] = token
    out[#out + 1] = dl
    out[#out + 1] = wrapped
    out[#out + 1] = e[4]
  end
  local function each(cmd, key, args)
    local i = 1
    while i <= #args do
      local j = math.min(i + 999, #args)
      redis.call(cmd, key, unpack(args, i, j))
      i = j + 1
    end
  end
  -- A field whose value is longer than Redis' hash-max-listpack-value
  -- (64 by default) keeps celeriac's attempts hash a hashtable for good:
  -- as a listpack (up to 128 fields, about the attempts in flight) every
  -- HGET, HSET and HDEL scans the whole hash. It reads as a record that
  -- holds nothing.
  records[#records + 1] = 'celeriac.encoding'
  records[#records + 1] = '0 0 0 celeriac: a value longer than hash-max-listpack-value keeps this hash a hashtable'
  each('HSET', K_UNACKED, unacked)
  each('ZADD', K_INDEX, index)
  each('HSET', K_ATTEMPTS, records)
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
