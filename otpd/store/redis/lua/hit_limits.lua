-- KEYS: limit keys; ARGV: now_ms, member, n, (limit, window_ms, distinct, member) * n
-- -> {1} counted | {0, limit_index, retry_ms}
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[3])
local refused = check_limits(1, 4, n, now, ARGV[2])
if refused then
  return {0, refused[1], refused[2]}
end
record_hits(1, 4, n, now, ARGV[2])
return {1}
