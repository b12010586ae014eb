-- A worker starts an attempt: only while its daemon still holds the entry (another daemon
-- may have claimed it while it waited in this one's buffer). Resets the entry's idle time,
-- so no one claims it during the provider call, and records the attempt.
-- KEYS[1] the record, KEYS[2] the ready stream
-- ARGV: group, consumer, entry_id, (field, value) * m -> 1 | 0 (not ours, or no record)
local held = redis.call('XPENDING', KEYS[2], ARGV[1], ARGV[3], ARGV[3], 1)
if #held == 0 or held[1][2] ~= ARGV[2] then
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
local fields = {}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
return 1
