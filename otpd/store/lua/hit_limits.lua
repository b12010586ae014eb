-- KEYS: limit keys; ARGV: now_ms, member, consume (0|1), n, (limit, window_ms, distinct, member) * n
-- -> {1} counted (or would fit) | {0, limit_index, retry_ms}
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[4])
local refused = check_limits(1, 5, n, now, ARGV[2])
if refused then
  return {0, refused[1], refused[2]}
end
if ARGV[3] == '1' then
  record_hits(1, 5, n, now, ARGV[2])
end
return {1}
