-- Consume one recovery code: every stored hash is compared in constant time.
-- KEYS[1] the enabled TOTP record, KEYS[2] the user's failure window
-- ARGV: now_ms, member, code_hash, (limit, window_ms, distinct, member) of the window
-- -> {"ok", remaining} | {"invalid_code"} | {"missing"} | {"locked", retry_ms}
local rec = redis.call('HMGET', KEYS[1], 'sealed_secret', 'recovery')
if not rec[1] then
  return {'missing'}
end
local now = tonumber(ARGV[1])
local refused = check_limits(2, 4, 1, now, ARGV[2])
if refused then
  return {'locked', refused[2]}
end
local kept, matched = {}, false
for stored in string.gmatch(rec[2] or '', '%S+') do
  if ct_equal(stored, ARGV[3]) and not matched then
    matched = true
  else
    kept[#kept + 1] = stored
  end
end
if not matched then
  record_hits(2, 4, 1, now, ARGV[2])
  return {'invalid_code'}
end
redis.call('HSET', KEYS[1], 'recovery', table.concat(kept, ' '))
return {'ok', #kept}
