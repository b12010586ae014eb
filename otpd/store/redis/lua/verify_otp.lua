-- KEYS[1] code hash; ARGV: code_hash, now (seconds, like expires_at)
-- -> {reason, attempts_left, otp_id, channel, range_hash, created_at, tracked}; reason "ok"
-- consumes the code
local rec = redis.call('HMGET', KEYS[1], 'code_hash', 'expires_at', 'attempts', 'max_attempts',
  'otp_id', 'channel', 'range_hash', 'created_at', 'tracked')
if not rec[1] then
  return {'no_active_code', 0, '', '', '', '0', '0'}
end
-- what the code was issued with (codes stored before these fields existed have none)
local found = {rec[5], rec[6], rec[7] or '', rec[8] or '0', rec[9] or '0'}
local function reply(reason, left)
  return {reason, left, unpack(found)}
end
local now = tonumber(ARGV[2])
if now >= tonumber(rec[2]) then
  redis.call('DEL', KEYS[1])
  return reply('no_active_code', 0)
end
local attempts = tonumber(rec[3])
local max = tonumber(rec[4])
if attempts >= max then
  return reply('too_many_attempts', 0)
end
if ct_equal(rec[1], ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return reply('ok', max - attempts)
end
attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return reply('invalid_code', max - attempts)
