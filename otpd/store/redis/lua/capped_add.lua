-- KEYS[1] counter; ARGV: amount, cap, ttl_seconds -> {1|0, total}
return capped_add(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
