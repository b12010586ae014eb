-- The fields of each hash in KEYS, in order: {{field, value, ...}, ...} ({} for a key
-- that is gone). Reads only (flags=no-writes: served when Redis is out of memory).
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('HGETALL', KEYS[i])
end
return out
