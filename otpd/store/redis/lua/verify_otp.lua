-- KEYS[1] code hash, KEYS[2] (optional) the user's audit stream
-- ARGV: code_hash, now (seconds, like expires_at); with KEYS[2] the arguments of the
-- audit record (audit_add_argv), with the fields known before the verify
-- -> {reason, attempts_left, otp_id, channel, range_hash, created_at, tracked}; reason "ok"
-- consumes the code. With KEYS[2] the verify's audit record is kept with the outcome's
-- fields, as otpd.store.base.verify_audit_fields names them.
local rec = redis.call('HMGET', KEYS[1], 'code_hash', 'expires_at', 'attempts', 'max_attempts',
  'otp_id', 'channel', 'range_hash', 'created_at', 'tracked')
local found = {'', '', '', '0', '0'}
if rec[1] then
  -- what the code was issued with (codes stored before these fields existed have none)
  found = {rec[5] or '', rec[6] or '', rec[7] or '', rec[8] or '0', rec[9] or '0'}
end
local function reply(reason, left)
  if KEYS[2] then
    local ok = reason == 'ok'
    local fields = {}
    local function add(name, value)
      fields[#fields + 1] = name
      fields[#fields + 1] = value
    end
    add('event', ok and 'otp_verified' or 'otp_failed')
    if found[1] ~= '' then add('otp_id', found[1]) end
    if found[2] ~= '' then add('channel', found[2]) end
    add('result', ok and 'verified' or reason)
    if not ok then add('reason', reason) end
    add('attempts_left', tostring(ok and 0 or left))
    audit_add_argv(KEYS[2], 3, fields)
  end
  return {reason, left, unpack(found)}
end
if not rec[1] then
  return reply('no_active_code', 0)
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
