-- Lift the block of a number range and forget its samples, so it starts afresh.
-- KEYS[1] the block, KEYS[2] the range's samples, KEYS[3] the blocks by expiry
-- ARGV: now (seconds), range_hash -> 1 a live block was lifted | 0 none
local expires_at = redis.call('HGET', KEYS[1], 'expires_at')
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
if expires_at and tonumber(expires_at) > tonumber(ARGV[1]) then
  return 1
end
return 0
