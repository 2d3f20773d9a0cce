-- This script is the compare-and-set that gives a listener exactly one
-- outcome: it records a match, or notes an in-scope mismatch, only while the
-- listener is pending and live at now (the message's time). KEYS[1]
-- listener. ARGV now, 'm' (match) or 'x' (mismatch), message JSON,
-- retention, event channel, message id, and registered-by: when not 0, a
-- listener registered after that time is not this message's to decide (an
-- ingest replayed after a failure finishing its matching must not match a
-- listener that came later).
--
-- Deciding again with the message that already matched answers MATCHED
-- again: a retry of an ingest whose first answer was lost learns that its
-- message matched.
local now = tonumber(ARGV[1])
local l = hgetall(KEYS[1])
if not l then return 'GONE' end
if l.oc ~= '0' then
  if l.oc == '1' and l.mid == ARGV[6] then return 'MATCHED' end
  return 'DECIDED'
end
local by = tonumber(ARGV[7])
if by > 0 and tonumber(l.ca) > by then return 'NEWER' end
local dl = tonumber(l.dl)
if (dl > 0 and now >= dl) or (dl == 0 and now >= tonumber(l.iu)) then return 'LATE' end
if ARGV[2] == 'x' then
  redis.call('HSET', KEYS[1], 'mm', 1)
  return 'NOTED'
end
redis.call('HSET', KEYS[1], 'oc', 1, 'da', now, 'msg', ARGV[3], 'mid', ARGV[6])
expire(KEYS[1], tonumber(ARGV[4]))
redis.call('PUBLISH', ARGV[5], 'r')
return 'MATCHED'
