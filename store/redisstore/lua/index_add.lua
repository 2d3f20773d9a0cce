-- This script adds a listener to its index set and makes sure the set
-- outlives it. KEYS[1] index set. ARGV member, ttl.
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = math.floor(tonumber(ARGV[2]))
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return {'OK'}
