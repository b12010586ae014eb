-- Replace the hash record at KEYS[1] if every limit allows it, counting them; all or nothing.
-- Issues OTP codes and link tokens alike (a new one supersedes the previous one).
-- Refuses (and counts nothing) when one of the suppression keys exists.
-- KEYS[1] the record; KEYS[2..n+1] limit keys; KEYS[n+2..n+s+1] suppression keys
-- ARGV: now_ms, ttl_ms, member, n, (limit, window_ms, distinct, member) * n, s,
--   (field, value) * m
-- -> {1} stored | {0, limit_index, retry_ms} | {2, suppression_index, 0}
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local member = ARGV[3]
local n = tonumber(ARGV[4])
local s = tonumber(ARGV[5 + 4 * n])
for j = 1, s do
  if redis.call('EXISTS', KEYS[n + 1 + j]) == 1 then
    return {2, j, 0}
  end
end
local refused = check_limits(2, 5, n, now, member)
if refused then
  return {0, refused[1], refused[2]}
end
record_hits(2, 5, n, now, member)
redis.call('DEL', KEYS[1])
local fields = {}
for i = 6 + 4 * n, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ttl)
return {1}
