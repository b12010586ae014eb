-- Lift a suppression. KEYS[1] the suppression; returns 1 when there was one
return redis.call('DEL', KEYS[1])
