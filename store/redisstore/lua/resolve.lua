-- This script is the compare-and-set that gives a listener exactly one
-- outcome: it records a match, or notes an in-scope mismatch, only while the
-- listener is pending and live at now. KEYS[1] listener. ARGV now, 'm'
-- (match) or 'x' (mismatch), message JSON, retention, event channel.
local now = tonumber(ARGV[1])
local l = hgetall(KEYS[1])
if not l then return 'GONE' end
if l.oc ~= '0' then return 'DECIDED' end
local dl = tonumber(l.dl)
if (dl > 0 and now >= dl) or (dl == 0 and now >= tonumber(l.iu)) then return 'LATE' end
if ARGV[2] == 'x' then
  redis.call('HSET', KEYS[1], 'mm', 1)
  return 'NOTED'
end
redis.call('HSET', KEYS[1], 'oc', 1, 'da', now, 'msg', ARGV[3])
expire(KEYS[1], tonumber(ARGV[4]))
redis.call('PUBLISH', ARGV[5], 'r')
return 'MATCHED'
