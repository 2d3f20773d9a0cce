-- This script cancels a pending listener: the same compare-and-set as a
-- match (resolve.lua) and a timeout (listener_get.lua), so the listener
-- still gets exactly one outcome. One past its deadline has timed out
-- instead. KEYS[1] listener. ARGV now, tenant, retention, event channel.
-- Answers {'NOTFOUND'}, {'GONE', record}, {'DECIDED', record} (decided
-- now: cancelled or timed out), or {'OK', record} (decided before).
local now, ret = tonumber(ARGV[1]), tonumber(ARGV[3])
local l = hgetall(KEYS[1])
if not l or l.tn ~= ARGV[2] then return {'NOTFOUND'} end
local oc, dl = tonumber(l.oc), tonumber(l.dl)
if (oc == 0 and dl == 0 and now >= tonumber(l.iu)) or (oc ~= 0 and now >= tonumber(l.da) + ret) then
  redis.call('DEL', KEYS[1])
  return {'GONE', cjson.encode(l)}
end
if oc ~= 0 then return {'OK', cjson.encode(l)} end
oc = 4
if dl > 0 and now >= dl then
  oc = 2
  if l.mm == '1' then oc = 3 end
end
set(KEYS[1], l, 'oc', oc, 'da', now)
expire(KEYS[1], ret)
redis.call('PUBLISH', ARGV[4], 'r')
return {'DECIDED', cjson.encode(l)}
