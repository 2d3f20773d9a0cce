-- This script ends a session (an ended one is returned as it is). KEYS[1]
-- session. ARGV now, tenant, ret, slotp, event prefix.
local now = tonumber(ARGV[1])
local rec = hgetall(KEYS[1])
if not rec or rec.tn ~= ARGV[2] then return {'NOTFOUND'} end
if active(state(rec, now)) then close(ARGV[4], ARGV[5], rec, now, tonumber(ARGV[3])) end
return {'OK', cjson.encode(rec)}
