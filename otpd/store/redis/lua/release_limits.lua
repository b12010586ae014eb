-- Give back hits that reserve_limits counted: a member the limit did not know is removed,
-- one it knew gets its earlier score back.
-- KEYS: limit keys; ARGV: member, n, (limit, window_ms, distinct, member) * n, before * n
local n = tonumber(ARGV[2])
for i = 1, n do
  local member = limit_member(3, i, ARGV[1])
  local before = ARGV[2 + 4 * n + i]
  if before == '' then
    redis.call('ZREM', KEYS[i], member)
  else
    redis.call('ZADD', KEYS[i], before, member)
  end
end
return 1
