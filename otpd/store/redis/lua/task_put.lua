-- Write a task record with its TTL (a task that is never queued: refused up front, or
-- kept by the in-process queue), or a code's trail. KEYS[1] the record;
-- ARGV: ttl_seconds, (field, value) * m
local fields = {}
for i = 2, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
