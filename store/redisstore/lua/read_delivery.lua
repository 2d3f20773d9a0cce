-- This script reads the message a delivery is for. KEYS[1] the session's
-- delivery index: delivery id to "<message id> <seq>". ARGV slotp, session
-- id, delivery id. Answers {'OK', message JSON, status overlay JSON or ''},
-- or {'GONE'}: the message was never recorded, or its delivery ended.
local slotp, sid = ARGV[1], ARGV[2]
local ref = redis.call('HGET', KEYS[1], ARGV[3])
if not ref then return {'GONE'} end
local mid, seq = string.match(ref, '^(%S+) (%d+)$')
local e = redis.call('XRANGE', slotp .. 'h:' .. sid, seq .. '-0', seq .. '-0')
if #e == 0 then return {'GONE'} end
return {'OK', e[1][2][2], redis.call('HGET', slotp .. 'ms:' .. sid, mid) or ''}
