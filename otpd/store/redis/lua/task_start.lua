-- A worker starts an attempt: only while its daemon still holds the entry (another daemon
-- may have claimed it while it waited in this one's buffer). Resets the entry's idle time,
-- so no one claims it during the provider call, and records the attempt.
-- With KEYS[3], the recipient's suppression entry: a suppressed recipient's attempt is
-- not recorded, and the entry's fields are the reply.
-- KEYS[1] the record, KEYS[2] the ready stream, KEYS[3] (optional) a suppression entry
-- ARGV: group, consumer, entry_id, (field, value) * m
-- -> 1 | 0 (not ours, or no record) | {field, value, ...} (suppressed)
local held = redis.call('XPENDING', KEYS[2], ARGV[1], ARGV[3], ARGV[3], 1)
if #held == 0 or held[1][2] ~= ARGV[2] then
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if KEYS[3] and redis.call('HEXISTS', KEYS[3], 'reason') == 1 then
  return redis.call('HGETALL', KEYS[3])
end
redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
return 1
