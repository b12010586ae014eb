-- Start or restart a pending TOTP enrolment, unless TOTP is enabled already.
-- KEYS[1] the enabled TOTP record, KEYS[2] the pending enrolment (one user: one slot)
-- ARGV: ttl_ms, (field, value) * n, expires_at among them (seconds, like the caller's now) -> 1 started | 0 TOTP is enabled for the user
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('DEL', KEYS[2])
local fields = {}
for i = 2, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]))
return 1
