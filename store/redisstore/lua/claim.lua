-- This script claims due deliveries: leases them to the caller and counts
-- the attempt. KEYS[1] the outbox, a sorted set of "<tenant> <session id>
-- <delivery id>" scored by when each is due (the end of its lease, or its
-- retry time); KEYS[2] the attempts each has had. ARGV now, lease (ms), the
-- most to claim. Answers {member, attempt, member, attempt, ...}.
local now, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local due = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, m in ipairs(due) do
  redis.call('ZADD', KEYS[1], now + lease, m)
  out[#out + 1] = m
  out[#out + 1] = tostring(redis.call('HINCRBY', KEYS[2], m, 1))
end
return out
