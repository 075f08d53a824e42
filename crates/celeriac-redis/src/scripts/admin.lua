-- Operator commands, off the publish/claim/settle path. ARGV[5] names the
-- command; its arguments follow.
--
--   purge <queue>: removes the queue's waiting messages (its lists and its
--     delayed set, whose messages also leave unacked); returns how many.
--   revoke <id> <remember seconds> <cap> <queue>...: removes waiting
--     messages with that task id from the queues' lists and delayed sets;
--     returns 2 when a celeriac attempt holds one (running), 1 when some
--     were removed, 0 when none was found. Running and unknown ids are
--     remembered (celeriac.revoked, at most <cap> of them).
--   dead_purge: deletes every dead letter; returns how many.
--   dead_replay (<entry> <list key> <envelope>)...: moves each dead letter
--     still listed back onto a queue list; returns how many.

local cmd = ARGV[5]

local function drop_held(tag)
  redis.call('HDEL', K_UNACKED, tag)
  redis.call('ZREM', K_INDEX, tag)
end

if cmd == 'purge' then
  local q = ARGV[6]
  local n = 0
  for _, step in ipairs(STEPS) do
    local key = list_key(q, step)
    n = n + redis.call('LLEN', key)
    redis.call('DEL', key)
  end
  local dk = delayed_key(q)
  for _, tag in ipairs(redis.call('ZRANGE', dk, 0, -1)) do
    if redis.call('HEXISTS', K_UNACKED, tag) == 1 then n = n + 1 end
    drop_held(tag)
  end
  redis.call('DEL', dk)
  return n

elseif cmd == 'revoke' then
  local id = ARGV[6]
  local remember, cap = tonumber(ARGV[7]), tonumber(ARGV[8])
  local quoted = '"id"%s*:%s*"' .. string.gsub(id, '[%^%$%(%)%%%.%[%]%*%+%-%?]', '%%%0') .. '"'
  local function names(s)
    return s and string.find(s, id, 1, true) and string.find(s, quoted)
  end
  local removed, running = 0, false
  for i = 9, #ARGV do
    local q = ARGV[i]
    for _, step in ipairs(STEPS) do
      local key = list_key(q, step)
      for _, env in ipairs(redis.call('LRANGE', key, 0, -1)) do
        if names(env) then removed = removed + redis.call('LREM', key, 0, env) end
      end
    end
    local dk = delayed_key(q)
    for _, tag in ipairs(redis.call('ZRANGE', dk, 0, -1)) do
      if names(redis.call('HGET', K_UNACKED, tag)) then
        redis.call('ZREM', dk, tag)
        drop_held(tag)
        removed = removed + 1
      end
    end
  end
  -- What is left under an attempt tag runs now (those deferred to an
  -- eta were removed with their delayed sets above).
  for _, tag in ipairs(redis.call('ZRANGE', K_INDEX, 0, -1)) do
    if is_attempt_tag(tag) and names(redis.call('HGET', K_UNACKED, tag)) then
      running = true
    end
  end
  if running or removed == 0 then
    local t = now()
    redis.call('ZREMRANGEBYSCORE', K_REVOKED, '-inf', fmt(t))
    redis.call('ZADD', K_REVOKED, fmt(t + remember), id)
    local extra = redis.call('ZCARD', K_REVOKED) - cap
    if extra > 0 then redis.call('ZREMRANGEBYRANK', K_REVOKED, 0, extra - 1) end
  end
  if running then return 2 end
  if removed > 0 then return 1 end
  return 0

elseif cmd == 'dead_purge' then
  local n = redis.call('LLEN', K_DEAD)
  redis.call('DEL', K_DEAD)
  return n

elseif cmd == 'dead_replay' then
  local n = 0
  for i = 6, #ARGV, 3 do
    if redis.call('LREM', K_DEAD, 1, ARGV[i]) == 1 then
      redis.call('LPUSH', ARGV[i + 1], ARGV[i + 2])
      n = n + 1
    end
  end
  return n
end
return redis.error_reply('unknown admin command ' .. tostring(cmd))
