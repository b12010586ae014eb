-- Append one audit record to each of KEYS (audit streams; one record per key, in order).
-- ARGV: six per record: now_ms, trim (MINID|MAXLEN), threshold, exactness (=|~), ttl_ms,
-- the fields as a JSON array [field, value, ...] -> the ids of the new entries.
-- An id is the caller's clock (so retention and time ranges follow it), never below the
-- stream's newest entry: XADD refuses an id that goes back (a clock step, another daemon).
local ids = {}
for k = 1, #KEYS do
  local key = KEYS[k]
  local base = (k - 1) * 6
  local now = ARGV[base + 1]
  local fields = cjson.decode(ARGV[base + 6])
  local trim, exact, threshold = ARGV[base + 2], ARGV[base + 4], ARGV[base + 3]
  -- the caller's millisecond with the next free sequence number (Redis 7: "<ms>-*")
  local added = redis.pcall('XADD', key, trim, exact, threshold, now .. '-*', unpack(fields))
  if type(added) == 'table' and added.err then
    -- the stream's newest entry is at or past now (a clock step, another daemon): after it
    local id = now .. '-0'
    local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
    if top[1] then
      local ms, seq = string.match(top[1][1], '^(%d+)-(%d+)$')
      if tonumber(ms) >= tonumber(now) then
        id = ms .. '-' .. tostring(tonumber(seq) + 1)
      end
    end
    added = redis.call('XADD', key, trim, exact, threshold, id, unpack(fields))
  end
  ids[k] = added
  if ARGV[base + 2] == 'MAXLEN' then
    -- the capped stream (events of no user) keeps the retention too
    redis.call('XTRIM', key, 'MINID', tonumber(now) - tonumber(ARGV[base + 5]))
  end
  redis.call('PEXPIRE', key, ARGV[base + 5])
end
return ids
