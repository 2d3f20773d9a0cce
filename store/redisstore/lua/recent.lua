-- This script reads a session's newest messages, newest first: where a
-- listener registered with after_message_id looks for a reply that came
-- before it. KEYS[1] the session record. ARGV tenant, history key, count.
-- Answers {'NOTFOUND'}, or {'OK', message JSON...}.
local tn = redis.call('HGET', KEYS[1], 'tn')
if tn ~= ARGV[1] then return {'NOTFOUND'} end
local out = {'OK'}
for _, e in ipairs(redis.call('XREVRANGE', ARGV[2], '+', '-', 'COUNT', tonumber(ARGV[3]))) do
  out[#out + 1] = e[2][2]
end
return out
