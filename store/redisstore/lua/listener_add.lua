-- This script stores a pending listener. KEYS[1] listener. ARGV
-- tenant, filter JSON, now, deadline (0 = none), idle until, retention.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'EXISTS'} end
local now, dl, iu = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local rec = {}
set(KEYS[1], rec, 'tn', ARGV[1], 'flt', ARGV[2], 'ca', now, 'dl', dl, 'iu', iu, 'mm', 0, 'oc', 0, 'da', 0)
local life = iu
if dl > 0 then life = dl end
expire(KEYS[1], life - now + tonumber(ARGV[6]))
return {'OK', cjson.encode(rec)}
