-- Write a task record and add it to its partition's ready stream, in one step.
-- KEYS[1] the record, KEYS[2] the ready stream (same hash tag)
-- ARGV: task_id, ttl_seconds, max_backlog, (field, value) * m
-- -> the stream entry id | false when the partition's backlog is full
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[3]) then
  return false
end
local fields = {}
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('XADD', KEYS[2], '*', 't', ARGV[1])
