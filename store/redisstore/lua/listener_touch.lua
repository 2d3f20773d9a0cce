-- This script extends a pending listener's idle window, and answers
-- its filter (so the caller can extend its index set too). KEYS[1]
-- listener. ARGV now, tenant, until, retention.
local now, untl = tonumber(ARGV[1]), tonumber(ARGV[3])
local l = hgetall(KEYS[1])
if not l or l.tn ~= ARGV[2] then return {'NOTFOUND'} end
local oc, dl = tonumber(l.oc), tonumber(l.dl)
if (oc == 0 and dl == 0 and now >= tonumber(l.iu)) or (oc ~= 0 and now >= tonumber(l.da) + tonumber(ARGV[4])) then
  redis.call('DEL', KEYS[1])
  return {'NOTFOUND'}
end
if oc == 0 and dl == 0 and untl > tonumber(l.iu) then
  redis.call('HSET', KEYS[1], 'iu', untl)
  expire(KEYS[1], untl - now + tonumber(ARGV[4]))
  return {'EXTENDED', l.flt}
end
return {'OK'}
