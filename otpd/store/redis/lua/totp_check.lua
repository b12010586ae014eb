-- Accept a TOTP code's time step once: compare-and-set of the last accepted step, so of
-- concurrent checks of one code exactly one is "ok". The caller read the sealed secret
-- and found which steps of the window the code matches; nothing secret is sent here.
-- KEYS[1] the record checked (the enabled one, or the pending one to confirm),
-- KEYS[2] the user's failure window, KEYS[3] the enabled record (where a confirmed
-- enrolment goes)
-- ARGV: now_ms, member, sealed_secret, (limit, window_ms, distinct, member) of the
-- failure window, confirm (0|1), n, steps * n (oldest first), recovery code hashes...
-- -> {"ok"} | {"invalid_code"} | {"replayed"} | {"missing"} | {"changed"}
--    | {"locked", retry_ms}
local rec = redis.call('HMGET', KEYS[1], 'sealed_secret', 'last_step', 'expires_at')
if not rec[1] then
  return {'missing'}
end
local now = tonumber(ARGV[1])
if rec[3] and now >= tonumber(rec[3]) * 1000 then
  -- a pending enrolment past its time (the key's TTL follows the server's clock)
  redis.call('DEL', KEYS[1])
  return {'missing'}
end
if rec[1] ~= ARGV[3] then
  return {'changed'}
end
local refused = check_limits(2, 4, 1, now, ARGV[2])
if refused then
  return {'locked', refused[2]}
end
local n = tonumber(ARGV[9])
if n == 0 then
  record_hits(2, 4, 1, now, ARGV[2])
  return {'invalid_code'}
end
local last = tonumber(rec[2])
local step = nil
for i = 10, 9 + n do
  if tonumber(ARGV[i]) > last then
    step = ARGV[i]
    break
  end
end
if not step then
  return {'replayed'}
end
if ARGV[8] == '1' then
  local recovery = {}
  for i = 10 + n, #ARGV do
    recovery[#recovery + 1] = ARGV[i]
  end
  local all = redis.call('HGETALL', KEYS[1])
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('HSET', KEYS[3], unpack(all))
  redis.call('HDEL', KEYS[3], 'expires_at')
  redis.call('HSET', KEYS[3], 'last_step', step, 'recovery', table.concat(recovery, ' '))
else
  redis.call('HSET', KEYS[1], 'last_step', step)
end
return {'ok'}
