-- KEYS[1] the owner's token record; ARGV: token_hash, now (seconds, like expires_at),
-- purpose, consume (0|1), then the record's field names (TOKEN_FIELDS, in their order)
-- -> {"ok", values in that order...} | {"unknown"} | {"expired", user_id}
--    | {"mismatch", user_id}
-- A match with consume=1 deletes the record in the same script, so of two concurrent
-- confirms exactly one sees "ok".
local names = {}
for i = 5, #ARGV do
  names[#names + 1] = ARGV[i]
end
local values = redis.call('HMGET', KEYS[1], unpack(names))
local rec = {}
for i = 1, #names do
  rec[names[i]] = values[i]
end
if not rec.token_hash then
  return {'unknown'}
end
if tonumber(ARGV[2]) >= tonumber(rec.expires_at) then
  redis.call('DEL', KEYS[1])
  return {'expired', rec.user_id}
end
if rec.purpose ~= ARGV[3] or not ct_equal(rec.token_hash, ARGV[1]) then
  return {'mismatch', rec.user_id}
end
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[1])
end
local out = {'ok'}
for i = 1, #names do
  out[#out + 1] = values[i] or ''
end
return out
