-- This script reads a session's newest messages, newest first: where a
-- listener registered with after_message_id looks for a reply that came
-- before it. KEYS[1] the session record. ARGV tenant, history key, count,
-- the after message's ms: a session with no message since reads nothing.
-- Answers {'NOTFOUND'}, or {'OK', message JSON...}.
local rec = redis.call('HMGET', KEYS[1], 'tn', 'lms')
if rec[1] ~= ARGV[1] then return {'NOTFOUND'} end
local out = {'OK'}
if (tonumber(rec[2]) or 0) < tonumber(ARGV[4]) then return out end
for _, e in ipairs(redis.call('XREVRANGE', ARGV[2], '+', '-', 'COUNT', tonumber(ARGV[3]))) do
  out[#out + 1] = e[2][2]
end
return out
