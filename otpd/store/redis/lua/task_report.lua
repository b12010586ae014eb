-- Apply a provider's report to a task record, once per event, never weakening it.
-- KEYS[1] the record; ARGV: message_id, event_ref, status, reason, at, delivered (0|1),
--   then the statuses the new one may replace
-- -> applied | duplicate | stale | other_message | gone
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 'gone'
end
local seen = 'r:' .. ARGV[2]
if redis.call('HEXISTS', KEYS[1], seen) == 1 then
  return 'duplicate'
end
local rec = redis.call('HMGET', KEYS[1], 'provider_message_id', 'status', 'updated_at')
local outcome = 'applied'
if rec[1] ~= ARGV[1] then
  outcome = 'other_message'
else
  local replaceable = false
  for i = 7, #ARGV do
    if rec[2] == ARGV[i] then
      replaceable = true
    end
  end
  if not replaceable then
    outcome = 'stale'
  end
end
redis.call('HSET', KEYS[1], seen, '1')
if outcome == 'applied' then
  local at = tonumber(ARGV[5])
  local updated = ARGV[5]
  if (tonumber(rec[3]) or 0) > at then
    updated = rec[3]
  end
  redis.call('HSET', KEYS[1], 'status', ARGV[3], 'updated_at', updated)
  if ARGV[6] == '1' then
    redis.call('HSET', KEYS[1], 'delivered_at', ARGV[5], 'reason', '')
  else
    redis.call('HSET', KEYS[1], 'reason', ARGV[4])
  end
end
return outcome
