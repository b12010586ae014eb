-- Append one audit record to each of KEYS (audit streams; one record per key, in order).
-- ARGV: six per record: now_ms, trim (MINID|MAXLEN), threshold, exactness (=|~), ttl_ms,
-- the fields as a JSON array [field, value, ...] -> the ids of the new entries.
-- An id is the caller's clock (so retention and time ranges follow it), never below the
-- stream's newest entry (audit_add in the prelude).
local ids = {}
for k = 1, #KEYS do
  ids[k] = audit_add_argv(KEYS[k], (k - 1) * 6 + 1)
end
return ids
