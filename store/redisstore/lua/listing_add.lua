-- This script lists a new listener in its tenant's listing, for
-- ListListeners, and drops listings whose listeners have expired. KEYS[1]
-- the listing: ids, all scored 0, so that they page in id order. ARGV the
-- listing's expiry set (same slot: ids scored by when their records
-- expire), now, listener id, its record's expiry, how long the keys must
-- live (ms).
local now = tonumber(ARGV[2])
local old = redis.call('ZRANGEBYSCORE', ARGV[1], '-inf', now, 'LIMIT', 0, 100)
if #old > 0 then
  redis.call('ZREM', KEYS[1], unpack(old))
  redis.call('ZREM', ARGV[1], unpack(old))
end
redis.call('ZADD', KEYS[1], 0, ARGV[3])
redis.call('ZADD', ARGV[1], ARGV[4], ARGV[3])
local ttl = math.floor(tonumber(ARGV[5]))
for _, k in ipairs({KEYS[1], ARGV[1]}) do
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
end
return {'OK'}
