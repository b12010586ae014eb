-- A task reached its final status: write it and acknowledge its stream entry together.
-- A dead letter is added to the partition's dead-letter stream (trimmed by age) and the
-- sealed body is kept for a replay; otherwise the body is dropped.
-- With KEYS[4], the delivery's audit record is kept in that stream in the same step.
-- KEYS[1] the record, KEYS[2] the ready stream, KEYS[3] the dead-letter stream,
--   KEYS[4] (optional) an audit stream
-- ARGV: group, entry_id, dead (0|1), dead_ttl_seconds, dead_min_id, m, then with KEYS[4]
--   the audit record's (now_ms, trim, threshold, exactness, ttl_ms, f, f strings, as
--   audit_append.lua takes them), then (field, value) * m for the record, then
--   (field, value) * k for the dead letter
-- -> 1 | 0 when the record was gone (the entry is acknowledged and the audit record kept
--   either way)
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
end
local a = 7
if KEYS[4] then
  local _
  _, a = audit_add_argv(KEYS[4], 7)
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local m = tonumber(ARGV[6])
redis.call('HSET', KEYS[1], unpack(ARGV, a, a - 1 + 2 * m))
if ARGV[3] == '1' then
  local id = redis.call('XADD', KEYS[3], 'MINID', '~', ARGV[5], '*', unpack(ARGV, a + 2 * m))
  redis.call('HSET', KEYS[1], 'dead', id)
  local keep = tonumber(ARGV[4])
  if redis.call('TTL', KEYS[1]) < keep then
    redis.call('EXPIRE', KEYS[1], keep)
  end
else
  redis.call('HDEL', KEYS[1], 'body')
end
return 1
