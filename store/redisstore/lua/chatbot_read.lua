-- This script reads what StartChatbot decides on: the named session
-- (if any), the tuple's active session and the contact, with their
-- versions. KEYS[1] tuple pointer. ARGV now, tenant, named sid, slotp,
-- contact key, idempotency key, fingerprint.
local now, slotp = tonumber(ARGV[1]), ARGV[4]
local prev = idem(ARGV[6], ARGV[7], now)
if prev then return prev end
local named = ''
if ARGV[3] ~= '' then
  local rec = hgetall(slotp .. 's:' .. ARGV[3])
  if not rec or rec.tn ~= ARGV[2] then return {'NOTFOUND'} end
  named = cjson.encode(rec)
end
local act, ptr = '', redis.call('GET', KEYS[1]) or ''
if ptr ~= '' then
  local rec = hgetall(slotp .. 's:' .. ptr)
  if rec then act = cjson.encode(rec) end
end
local ct = hgetall(ARGV[5])
return {'OK', named, act, ptr, ct and cjson.encode(ct) or ''}
