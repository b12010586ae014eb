-- Put a task aside until it is due again: write its record, acknowledge its entry and
-- add it to the partition's delayed set, together.
-- KEYS[1] the record, KEYS[2] the ready stream, KEYS[3] the delayed set
-- ARGV: group, entry_id, task_id, due_ms, (field, value) * m -> 1 | 0 (record gone)
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[2])
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if #ARGV > 4 then
  local fields = {}
  for i = 5, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  redis.call('HSET', KEYS[1], unpack(fields))
end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
return 1
