-- This script opens a session unless one is active for the tuple.
-- KEYS[1] tuple pointer. ARGV slotp, now, ttl, ret, tenant, platform,
-- channel, user, new sid, metadata JSON, the tenant's activity index
-- ('' on Cluster). Refused: EXISTS and the active session's id.
local slotp, now, ttl, ret = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cur = redis.call('GET', KEYS[1])
if cur then
  local rec = hgetall(slotp .. 's:' .. cur)
  if rec and active(state(rec, now)) then return {'EXISTS', cur} end
end
local rec = open(slotp, ARGV[9], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[10], now, ttl, ret, ARGV[11])
return {'OK', cjson.encode(rec)}
