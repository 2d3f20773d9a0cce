-- This script reads a session's retained history from a cursor, with each
-- message's status from the overlay where it changed after the append
-- (see status.lua). KEYS[1] the session record. ARGV tenant, history key,
-- overlay key, first stream id, count. Answers {'NOTFOUND'}, or {'OK', the
-- session's last seq, n, n message JSONs, n overlay JSONs ('' for none)}.
local rec = redis.call('HMGET', KEYS[1], 'tn', 'seq')
if rec[1] ~= ARGV[1] then return {'NOTFOUND'} end
local entries = redis.call('XRANGE', ARGV[2], ARGV[4], '+', 'COUNT', tonumber(ARGV[5]))
local out = {'OK', rec[2], tostring(#entries)}
for _, e in ipairs(entries) do out[#out + 1] = e[2][2] end
local overlaid = redis.call('EXISTS', ARGV[3]) == 1
for _, e in ipairs(entries) do
  local st = false
  -- A message's JSON starts with its id: {"id":"msg_<36>"
  if overlaid then st = redis.call('HGET', ARGV[3], string.sub(e[2][2], 8, 47)) end
  out[#out + 1] = st or ''
end
return out
