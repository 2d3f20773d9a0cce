-- This script finds the message a platform's receipt is for, or keeps the
-- receipt until the message is known by that id (platform_ref.lua). KEYS[1]
-- the platform id's key. ARGV the receipt as JSON, how long to keep an
-- early receipt (ms), the most early receipts kept for one id. Answers
-- {'REF', '<tenant> <session id> <message id>'} or {'EARLY'}.
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, 1) == 'r' then return {'REF', string.sub(cur, 2)} end
local early = {}
if cur then early = cjson.decode(string.sub(cur, 2)) end
if #early < tonumber(ARGV[3]) then early[#early + 1] = cjson.decode(ARGV[1]) end
redis.call('SET', KEYS[1], 'e' .. cjson.encode(early), 'PX', tonumber(ARGV[2]))
return {'EARLY'}
