-- Applies a sweep's decisions, each only if the entry's unacked_index
-- score is still the one the sweep read (else someone acted on it since).
--
-- ARGV[5..]: per entry: tag, score read, new score ('' for none),
-- redelivered envelope ('' for none), dead-letter metadata ('' for none),
-- delayed queue ('' for none), number of list keys K, then K list keys.
--
-- With a new score (the message's eta lies ahead) and no live celeriac
-- attempt on it: the entry is re-scored, left where it is. Else, with an
-- envelope: restored to the front of each list (kombu's restore: RPUSH). Else: dropped from unacked, into the dead
-- letters when metadata is given.
--
-- Returns the number of entries acted on.

local done = 0
local i = 5
while i <= #ARGV do
  local tag, seen, rescore, env = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local meta, dq, k = ARGV[i + 4], ARGV[i + 5], tonumber(ARGV[i + 6])
  local s = redis.call('ZSCORE', K_INDEX, tag)
  if s and tonumber(s) == tonumber(seen) then
    -- A celeriac attempt runs it, unless its tag waits in a delayed set
    -- (a message deferred to its eta).
    local live = is_attempt_tag(tag)
      and not (dq ~= '' and redis.call('ZSCORE', delayed_key(dq), tag))
    if rescore ~= '' and not live then
      redis.call('ZADD', K_INDEX, rescore, tag)
    elseif env ~= '' then
      redis.call('ZREM', K_INDEX, tag)
      redis.call('HDEL', K_UNACKED, tag)
      for j = 1, k do redis.call('RPUSH', ARGV[i + 6 + j], env) end
      if dq ~= '' then redis.call('ZREM', delayed_key(dq), tag) end
    else
      local value = redis.call('HGET', K_UNACKED, tag)
      if value and meta ~= '' then redis.call('RPUSH', K_DEAD, meta .. '\n' .. value) end
      redis.call('ZREM', K_INDEX, tag)
      redis.call('HDEL', K_UNACKED, tag)
      if dq ~= '' then redis.call('ZREM', delayed_key(dq), tag) end
    end
    done = done + 1
  end
  i = i + 7 + k
end
return done
