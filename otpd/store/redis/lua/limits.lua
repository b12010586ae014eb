-- Shared prelude: sliding-window limits kept as sorted sets of hit times (ms).
-- Limits are passed as KEYS[k0 .. k0+n-1] with ARGV quads (limit, window_ms, distinct,
-- member) from a0; an empty member means the member of the call. A distinct limit counts
-- members, not hits: a member already in the window passes and does not count again
-- (e.g. "distinct numbers per range").

local function limit_member(a0, i, member)
  local own = ARGV[a0 + 4 * (i - 1) + 3]
  if own == '' then
    return member
  end
  return own
end

local function check_limits(k0, a0, n, now, member)
  local worst_i, worst_retry = 0, -1
  for i = 1, n do
    local key = KEYS[k0 + i - 1]
    local limit = tonumber(ARGV[a0 + 4 * (i - 1)])
    local window = tonumber(ARGV[a0 + 4 * (i - 1) + 1])
    local distinct = ARGV[a0 + 4 * (i - 1) + 2] == '1'
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local count = redis.call('ZCARD', key)
    local known = distinct and redis.call('ZSCORE', key, limit_member(a0, i, member))
    if count >= limit and not known then
      -- the hit that must leave the window before one more fits
      local oldest = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
      local retry = tonumber(oldest[2]) + window - now
      if retry > worst_retry then
        worst_i, worst_retry = i, retry
      end
    end
  end
  if worst_i > 0 then
    return {worst_i, worst_retry}
  end
  return nil
end

local function record_hits(k0, a0, n, now, member)
  for i = 1, n do
    local key = KEYS[k0 + i - 1]
    local window = tonumber(ARGV[a0 + 4 * (i - 1) + 1])
    redis.call('ZADD', key, now, limit_member(a0, i, member))
    redis.call('PEXPIRE', key, window)
  end
end

-- Constant-time equality: the time taken does not depend on where two strings differ
-- (only on their length). Four bytes at a time, read by struct.unpack (in C) at most 64
-- words per call (what one call returns stays far below Lua's stack limit); the last few
-- bytes one by one. A byte at a time took 8 us for a 64-character digest.
local function ct_equal(a, b)
  local n = #a
  if n ~= #b then
    return false
  end
  local bor, bxor = bit.bor, bit.bxor
  local words = math.floor(n / 4)
  local acc = 0
  local done = 0
  while done < words do
    local k = math.min(64, words - done)
    local format = '>' .. string.rep('I4', k)
    local x = {struct.unpack(format, a, 4 * done + 1)}
    local y = {struct.unpack(format, b, 4 * done + 1)}
    for i = 1, k do
      acc = bor(acc, bxor(x[i], y[i]))
    end
    done = done + k
  end
  for i = 4 * words + 1, n do
    acc = bor(acc, bxor(string.byte(a, i), string.byte(b, i)))
  end
  return acc == 0
end

-- Add amount to a counter unless that takes it above cap. -> {1|0, total as string}
local function capped_add(key, amount, cap, ttl)
  local current = tonumber(redis.call('GET', key) or '0')
  if current + amount > cap then
    return {0, tostring(current)}
  end
  local total = redis.call('INCRBYFLOAT', key, amount)
  redis.call('EXPIRE', key, ttl)
  return {1, tostring(total)}
end

-- Append one audit record (fields: a flat array field, value, ...) to the stream at key:
-- id "<now_ms>-*", or past the stream's newest entry when that is at or after now_ms (a
-- clock step, another daemon: XADD refuses an id that goes back); trimmed by trim (MINID
-- or MAXLEN) at threshold (exactness "=" or "~"), kept for ttl_ms. -> the new entry's id
local function audit_add(key, now_ms, trim, exact, threshold, ttl_ms, fields)
  local added = redis.pcall('XADD', key, trim, exact, threshold, now_ms .. '-*', unpack(fields))
  if type(added) == 'table' and added.err then
    local id = now_ms .. '-0'
    local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
    if top[1] then
      local top_ms, seq = string.match(top[1][1], '^(%d+)-(%d+)$')
      if tonumber(top_ms) >= tonumber(now_ms) then
        id = top_ms .. '-' .. tostring(tonumber(seq) + 1)
      end
    end
    added = redis.call('XADD', key, trim, exact, threshold, id, unpack(fields))
  end
  if trim == 'MAXLEN' then
    -- the capped stream (events of no user) keeps the retention too
    redis.call('XTRIM', key, 'MINID', tonumber(now_ms) - tonumber(ttl_ms))
  end
  redis.call('PEXPIRE', key, ttl_ms)
  return added
end

-- audit_add of the record whose arguments start at ARGV[b], as RedisStore.audit_args gives
-- them to every script: now_ms, trim, threshold, exactness, ttl_ms, f, then the record's
-- f strings field, value, ...; extra (field, value, ...) goes after those fields.
-- -> the new entry's id, and the index of the argument after the record's
local function audit_add_argv(key, b, extra)
  local f = tonumber(ARGV[b + 5])
  local fields = {unpack(ARGV, b + 6, b + 5 + f)}
  for i = 1, #(extra or {}) do
    fields[#fields + 1] = extra[i]
  end
  local id = audit_add(key, ARGV[b], ARGV[b + 1], ARGV[b + 3], ARGV[b + 2], ARGV[b + 4], fields)
  return id, b + 6 + f
end
