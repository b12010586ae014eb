-- Count one hit on limits of one slot unless one is full, remembering what each limit
-- knew of the member before, so that release_limits can give the hit back exactly.
-- KEYS: limit keys; ARGV: now_ms, member, n, (limit, window_ms, distinct, member) * n
-- -> {1, before_1 .. before_n} (the member's earlier score, or '') | {0, index, retry_ms}
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[3])
local refused = check_limits(1, 4, n, now, ARGV[2])
if refused then
  return {0, refused[1], refused[2]}
end
local before = {1}
for i = 1, n do
  before[#before + 1] = redis.call('ZSCORE', KEYS[i], limit_member(4, i, ARGV[2])) or ''
end
record_hits(1, 4, n, now, ARGV[2])
return before
