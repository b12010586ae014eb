-- Replace the recovery codes of an enabled user.
-- KEYS[1] the enabled TOTP record; ARGV[1] the new hashes, space-separated
-- -> 1 replaced | 0 TOTP is not enabled
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'recovery', ARGV[1])
return 1
