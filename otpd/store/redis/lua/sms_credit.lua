-- Change one bucket of a range's samples (a verified code, or a code not sent after all).
-- Nothing is created: a range whose samples are gone (expired, or cleared by a block) has
-- nothing left to credit.
-- KEYS[1] the range's samples; ARGV: field (s:<bucket> or v:<bucket>), delta
-- -> 1 changed | 0 no samples
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2]) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
