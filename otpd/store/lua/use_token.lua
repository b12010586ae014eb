-- KEYS[1] the owner's token record; ARGV: token_hash, now (seconds, like expires_at),
-- purpose, consume (0|1)
-- -> {"ok", fields...} | {"unknown"} | {"expired", user_id} | {"mismatch", user_id}
-- A match with consume=1 deletes the record in the same script, so of two concurrent
-- confirms exactly one sees "ok".
local names = {'token_id', 'token_hash', 'purpose', 'user_id', 'email', 'created_at',
  'expires_at', 'client_ip', 'user_agent'}
local rec = redis.call('HMGET', KEYS[1], unpack(names))
if not rec[2] then
  return {'unknown'}
end
if tonumber(ARGV[2]) >= tonumber(rec[7]) then
  redis.call('DEL', KEYS[1])
  return {'expired', rec[4]}
end
if rec[3] ~= ARGV[3] or not ct_equal(rec[2], ARGV[1]) then
  return {'mismatch', rec[4]}
end
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[1])
end
local out = {'ok'}
for i = 1, #names do
  out[#out + 1] = rec[i] or ''
end
return out
