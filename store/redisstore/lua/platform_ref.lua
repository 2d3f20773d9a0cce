-- This script makes a message known by its platform's id, and answers the
-- receipts that came for that id before it was (a platform can report on
-- a message before the hub has its answer to the send). KEYS[1] the
-- platform id's key: 'r<tenant> <session id> <message id>' once known,
-- 'e<receipts JSON array>' before. ARGV the reference, how long to keep it
-- (ms). Answers the early receipts' JSON array, or ''.
local cur = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], 'r' .. ARGV[1], 'PX', tonumber(ARGV[2]))
if cur and string.sub(cur, 1, 1) == 'e' then return string.sub(cur, 2) end
return ''
