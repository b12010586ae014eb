-- Move the tasks whose retry is due from the delayed set back to the ready stream.
-- KEYS[1] the ready stream, KEYS[2] the delayed set; ARGV: now_ms, at_most -> moved
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, task_id in ipairs(due) do
  redis.call('ZREM', KEYS[2], task_id)
  redis.call('XADD', KEYS[1], '*', 't', task_id)
end
return #due
