-- Remove a user's TOTP secret, recovery codes and pending enrolment.
-- KEYS[1] the enabled TOTP record, KEYS[2] the pending enrolment
-- -> 1 TOTP was enabled | 0 it was not
local enabled = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return enabled
