-- KEYS[1] claim; ARGV: pending value, new value ('' = release), ttl_seconds -> 1|0
-- Only the caller's own pending claim is replaced (or dropped): one whose TTL ran out and
-- was claimed again by another request is left alone.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
end
return 1
