-- Replace the hash record at KEYS[1] if every limit allows it, counting them; all or nothing.
-- Issues OTP codes and link tokens alike (a new one supersedes the previous one).
-- Refuses (and writes nothing) when one of the suppression keys exists, or when the ready
-- stream of a task to record along with the code is full. Each such task (the durable
-- queue's, as task_enqueue.lua writes one) is recorded and added to its stream in the
-- same step: the issue and its deliveries are one round trip.
-- With an audit record (u = 1), the record is kept in the owner's audit stream in the same
-- step, only when the record at KEYS[1] is stored.
-- KEYS[1] the record; KEYS[2..n+1] limit keys; KEYS[n+2..n+s+1] suppression keys;
--   then (task record, ready stream) * t; then, with u = 1, the audit stream
-- ARGV: now_ms, ttl_ms, member, n, (limit, window_ms, distinct, member) * n, s, t,
--   (task_id, ttl_seconds, max_backlog, f, (field, value) * f/2) * t,
--   u (0 | 1), with u = 1 the arguments of the audit record (audit_add_argv), then
--   (field, value) * m
-- -> {1, entry_id * t} stored | {0, limit_index, retry_ms} | {2, suppression_index, 0}
--    | {3, task_index, 0} (its stream is full)
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local member = ARGV[3]
local n = tonumber(ARGV[4])
local s = tonumber(ARGV[5 + 4 * n])
local t = tonumber(ARGV[6 + 4 * n])
for j = 1, s do
  if redis.call('EXISTS', KEYS[n + 1 + j]) == 1 then
    return {2, j, 0}
  end
end
local refused = check_limits(2, 5, n, now, member)
if refused then
  return {0, refused[1], refused[2]}
end
-- the tasks: where each one's arguments start, and whether its stream has room
local task_args = {}
local a = 7 + 4 * n
for k = 1, t do
  task_args[k] = a
  local stream = KEYS[n + s + 2 * k + 1]
  if redis.call('XLEN', stream) >= tonumber(ARGV[a + 2]) then
    return {3, k, 0}
  end
  a = a + 4 + tonumber(ARGV[a + 3])
end
local audit_at = nil
if ARGV[a] == '1' then
  audit_at = a + 1
  a = a + 7 + tonumber(ARGV[a + 6])
else
  a = a + 1
end
record_hits(2, 5, n, now, member)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, a))
redis.call('PEXPIRE', KEYS[1], ttl)
local reply = {1}
for k = 1, t do
  local b = task_args[k]
  local record, stream = KEYS[n + s + 2 * k], KEYS[n + s + 2 * k + 1]
  redis.call('DEL', record)
  redis.call('HSET', record, unpack(ARGV, b + 4, b + 3 + tonumber(ARGV[b + 3])))
  redis.call('EXPIRE', record, ARGV[b + 1])
  reply[k + 1] = redis.call('XADD', stream, '*', 't', ARGV[b])
end
if audit_at then
  audit_add_argv(KEYS[n + s + 2 * t + 2], audit_at)
end
return reply
