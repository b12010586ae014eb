-- The task of a provider's message, or park a report until message_link runs.
-- KEYS[1] the message's link hash; ARGV: event_ref, parked report, ttl_seconds, max_parked
-- -> the task id | false when parked (or dropped past max_parked)
local task = redis.call('HGET', KEYS[1], 'task')
if task then
  return task
end
if redis.call('HLEN', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('HSETNX', KEYS[1], 'r:' .. ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return false
