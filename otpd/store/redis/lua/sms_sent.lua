-- Count one SMS code sent to a number range unless the range is blocked, and block it when
-- its window holds enough codes and too few of them were verified (the request that finds
-- this is the first one refused). Times are the caller's (seconds), so windows follow its
-- clock; key TTLs only free memory.
-- KEYS[1] the range's samples (hash: s:<bucket>, v:<bucket> -> codes sent, verified),
-- KEYS[2] its block (hash), KEYS[3] the blocks by expiry (sorted set)
-- ARGV: now, expires_at (of a new block), window, bucket (seconds), min_samples,
--   min_conversion, range_hash, sealed_prefix
-- -> {} counted | {fresh (0|1), reason, blocked_at, expires_at, sent, verified, sealed}
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[3])
local bucket = tonumber(ARGV[4])
local min_samples = tonumber(ARGV[5])
local min_conversion = tonumber(ARGV[6])

local block = redis.call('HMGET', KEYS[2], 'reason', 'blocked_at', 'expires_at', 'sent',
  'verified', 'prefix')
if block[1] then
  if tonumber(block[3]) > now then
    return {0, block[1], block[2], block[3], block[4], block[5], block[6]}
  end
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[7])
end

local current = math.floor(now / bucket)
local oldest = current - math.ceil(window / bucket) + 1
local sent, verified = 0, 0
local flat = redis.call('HGETALL', KEYS[1])
local stale = {}
for i = 1, #flat, 2 do
  local kind, at = string.match(flat[i], '^(%a):(%-?%d+)$')
  local n = tonumber(flat[i + 1])
  if not kind or tonumber(at) < oldest then
    stale[#stale + 1] = flat[i]
  elseif kind == 's' then
    sent = sent + n
  else
    verified = verified + n
  end
end
if #stale > 0 then
  redis.call('HDEL', KEYS[1], unpack(stale))
end

if min_samples > 0 and sent >= min_samples and verified < min_conversion * sent then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'reason', 'low_conversion', 'blocked_at', ARGV[1],
    'expires_at', ARGV[2], 'sent', sent, 'verified', verified, 'prefix', ARGV[8])
  local ttl = math.max(1, math.ceil(tonumber(ARGV[2]) - now))
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[7])
  if redis.call('TTL', KEYS[3]) < ttl then
    redis.call('EXPIRE', KEYS[3], ttl)
  end
  return {1, 'low_conversion', ARGV[1], ARGV[2], tostring(sent), tostring(verified), ARGV[8]}
end

redis.call('HINCRBY', KEYS[1], 's:' .. current, 1)
redis.call('EXPIRE', KEYS[1], window + bucket)
return {}
