-- Replace the hash record at KEYS[1] if every limit allows it, counting them; all or nothing.
-- Issues OTP codes and link tokens alike (a new one supersedes the previous one).
-- KEYS[1] the record; KEYS[2..n+1] limit keys
-- ARGV: now_ms, ttl_ms, member, n, (limit, window_ms, distinct, member) * n,
--   (field, value) * m
-- -> {1} stored | {0, limit_index, retry_ms}
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local member = ARGV[3]
local n = tonumber(ARGV[4])
local refused = check_limits(2, 5, n, now, member)
if refused then
  return {0, refused[1], refused[2]}
end
record_hits(2, 5, n, now, member)
redis.call('DEL', KEYS[1])
local fields = {}
for i = 5 + 4 * n, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ttl)
return {1}
