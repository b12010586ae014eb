-- Keep the trail of a code issued with a fallback. KEYS[1] the trail;
-- ARGV: ttl_seconds, (field, value) * m
local fields = {}
for i = 2, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
