-- Acknowledge and delete a stream entry that has nothing left to do.
-- KEYS[1] the ready stream; ARGV: group, entry_id
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
