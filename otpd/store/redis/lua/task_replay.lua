-- Send a dead letter again: the same task, attempts reset, back on the ready stream.
-- KEYS[1] the record, KEYS[2] the ready stream, KEYS[3] the dead-letter stream
-- ARGV: task_id, ttl_seconds, updated_at -> 1 | 0 when the task is no dead letter
local dead = redis.call('HGET', KEYS[1], 'dead')
if not dead or redis.call('HEXISTS', KEYS[1], 'body') == 0 then
  return 0
end
redis.call('XDEL', KEYS[3], dead)
redis.call('HDEL', KEYS[1], 'dead')
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempts', 0, 'last_error', '',
  'provider', '', 'provider_message_id', '', 'updated_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[2], '*', 't', ARGV[1])
return 1
