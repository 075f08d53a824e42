-- Publishes a batch, all or none.
--
-- ARGV[5] max queue length (0: none), ARGV[6] number of queues Q, then Q
-- pairs (queue, messages for it in this batch), then 6 fields per message:
-- kind ('r' ready | 'd' delayed), key (list or delayed set), delivery tag,
-- eta (unix seconds, delayed only), unacked_index score (delayed only),
-- value (the envelope for 'r'; the unacked value for 'd').
--
-- Returns 0, or {queue, waiting} for the first queue the batch would
-- overfill (nothing is written then).

local max_len = tonumber(ARGV[5])
local nq = tonumber(ARGV[6])
local first = 7 + 2 * nq

if max_len > 0 then
  for i = 0, nq - 1 do
    local q, n = ARGV[7 + 2 * i], tonumber(ARGV[8 + 2 * i])
    local waiting = redis.call('ZCARD', delayed_key(q))
    for _, step in ipairs(STEPS) do
      waiting = waiting + redis.call('LLEN', list_key(q, step))
    end
    if waiting + n > max_len then
      return {q, waiting}
    end
  end
end

for i = 0, nq - 1 do
  local q = ARGV[7 + 2 * i]
  -- kombu's anonymous-exchange binding (celery-protocol.md 4.3), so that
  -- Python tools that route through exchange tables find the queue.
  local member = q .. SEP .. SEP .. q
  redis.call('SADD', PREFIX .. '_kombu.binding.' .. q, member)
  redis.call('SADD', PREFIX .. '_kombu.binding_permanent.' .. q, member)
  redis.call('SADD', K_QUEUES, q)
end

-- Runs of ready messages to one list go in one LPUSH.
local run_key, run = nil, {}
local function flush()
  if run_key and #run > 0 then lpush_all(run_key, run, 1, #run) end
  run_key, run = nil, {}
end
local i = first
while i <= #ARGV do
  local kind, key = ARGV[i], ARGV[i + 1]
  if kind == 'r' then
    if key ~= run_key then flush(); run_key = key end
    run[#run + 1] = ARGV[i + 5]
  else
    flush()
    put(kind, key, ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5])
  end
  i = i + 6
end
flush()
return 0
