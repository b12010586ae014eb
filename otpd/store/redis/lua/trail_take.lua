-- Hand out a trail's sealed fallback message once, recording the fallback's delivery.
-- KEYS[1] the trail; ARGV: failed_task_id, now, channel, task_id (the fallback's)
-- -> the sealed message | false
local rec = redis.call('HMGET', KEYS[1], 'sealed', 'first_task', 'verified_at',
  'fallback_until', 'expires_at', 'deliveries')
if not rec[1] or rec[1] == '' or rec[2] ~= ARGV[1] then
  return false
end
local now = tonumber(ARGV[2])
if tonumber(rec[3]) > 0 or now >= tonumber(rec[4]) or now >= tonumber(rec[5]) then
  return false
end
local deliveries = cjson.decode(rec[6])
deliveries[#deliveries + 1] = {ARGV[3], ARGV[4], true}
redis.call('HSET', KEYS[1], 'sealed', '', 'deliveries', cjson.encode(deliveries),
  'fell_back_at', ARGV[2])
return rec[1]
