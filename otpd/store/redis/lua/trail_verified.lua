-- Record that a trail's code was verified: its fallback is never sent after that.
-- KEYS[1] the trail; ARGV: now
local at = redis.call('HGET', KEYS[1], 'verified_at')
if at and tonumber(at) == 0 then
  redis.call('HSET', KEYS[1], 'verified_at', ARGV[1], 'sealed', '')
end
return 1
