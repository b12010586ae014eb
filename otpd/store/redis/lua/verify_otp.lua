-- KEYS[1] code hash; ARGV: code_hash, now (seconds, like expires_at)
-- -> {reason, attempts_left, otp_id, channel}; reason "ok" consumes the code
local rec = redis.call('HMGET', KEYS[1], 'code_hash', 'expires_at', 'attempts', 'max_attempts',
  'otp_id', 'channel')
if not rec[1] then
  return {'no_active_code', 0, '', ''}
end
local now = tonumber(ARGV[2])
if now >= tonumber(rec[2]) then
  redis.call('DEL', KEYS[1])
  return {'no_active_code', 0, rec[5], rec[6]}
end
local attempts = tonumber(rec[3])
local max = tonumber(rec[4])
if attempts >= max then
  return {'too_many_attempts', 0, rec[5], rec[6]}
end
if ct_equal(rec[1], ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return {'ok', max - attempts, rec[5], rec[6]}
end
attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return {'invalid_code', max - attempts, rec[5], rec[6]}
