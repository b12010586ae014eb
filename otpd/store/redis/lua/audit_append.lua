-- KEYS[1] audit stream; ARGV: now_ms, trim (MINID|MAXLEN), threshold, exactness (=|~),
-- ttl_ms, then field, value, ... -> the id of the new entry.
-- The id is the caller's clock (so retention and time ranges follow it), never below the
-- stream's newest entry: XADD refuses an id that goes back (a clock step, another daemon).
local now = ARGV[1]
local id = now .. '-0'
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if top[1] then
  local ms, seq = string.match(top[1][1], '^(%d+)-(%d+)$')
  if tonumber(ms) >= tonumber(now) then
    id = ms .. '-' .. tostring(tonumber(seq) + 1)
  end
end
local fields = {}
for i = 6, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local added = redis.call('XADD', KEYS[1], ARGV[2], ARGV[4], ARGV[3], id, unpack(fields))
if ARGV[2] == 'MAXLEN' then
  -- the capped stream (events of no user) keeps the retention too
  redis.call('XTRIM', KEYS[1], 'MINID', tonumber(now) - tonumber(ARGV[5]))
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return added
