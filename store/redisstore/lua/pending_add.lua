-- This script counts a new listener among its tenant's pending ones,
-- unless the tenant has its cap of them already. KEYS[1] the tenant's
-- pending set: listener ids scored by when they stop being pending (a
-- deadline, or the end of an idle window). ARGV now, listener id, its
-- score, cap (0 = none), how long the set must live (ms). Answers {'OK'}
-- or {'FULL'}. Members past their score are dropped here; decided ones are
-- removed by the store as it learns of them (and would drop by score).
local now, cap = tonumber(ARGV[1]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return {'FULL'} end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local ttl = math.floor(tonumber(ARGV[5]))
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return {'OK'}
