-- Append one audit record to each of KEYS (audit streams; one record per key, in order).
-- ARGV per record: now_ms, trim (MINID|MAXLEN), threshold, exactness (=|~), ttl_ms, f,
-- then f strings: field, value, ... -> the ids of the new entries.
-- An id is the caller's clock (so retention and time ranges follow it), never below the
-- stream's newest entry (audit_add in the prelude).
local ids = {}
local b = 1
for k = 1, #KEYS do
  ids[k], b = audit_add_argv(KEYS[k], b)
end
return ids
