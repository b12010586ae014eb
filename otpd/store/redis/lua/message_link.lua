-- Link a provider's message to its task; hand over the reports parked before the link.
-- KEYS[1] the message's link hash; ARGV: task_id, ttl_seconds
-- -> the parked reports (they are dropped from the hash)
local parked = {}
local held = redis.call('HGETALL', KEYS[1])
for i = 1, #held, 2 do
  if string.sub(held[i], 1, 2) == 'r:' then
    parked[#parked + 1] = held[i + 1]
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'task', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return parked
