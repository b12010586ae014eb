-- Change fields of a task record that still exists (never recreate an expired one).
-- KEYS[1] the record; ARGV: (field, value) * m -> 1 | 0 when there is no record
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
