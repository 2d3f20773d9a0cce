-- This script moves an outbound message's delivery status forward
-- (docs/design.md §9) and tells the session's watchers. History entries
-- cannot change, so a status that changes after the append is kept in the
-- session's status overlay: KEYS[1], a hash of message id to status JSON
-- {st, pm (platform id), sa (when, ms), ec, em (the error)}. ARGV slotp,
-- session id, message id, its seq, the new status, platform id ('' keeps
-- it), when (ms), error code, error message, event channel, the delivery
-- this ends ('' for none), how long the overlay lives (ms).
-- Answers {'MOVED', status JSON}, {'SAME', status JSON} when the status
-- would not move forward (stale or repeated), or {'GONE'} when the message
-- is no longer retained.
local slotp, sid, mid, seq = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if ARGV[11] ~= '' then redis.call('HDEL', slotp .. 'dv:' .. sid, ARGV[11]) end
local c
local cur = redis.call('HGET', KEYS[1], mid)
if cur then
  c = cjson.decode(cur)
else
  local e = redis.call('XRANGE', slotp .. 'h:' .. sid, seq .. '-0', seq .. '-0')
  if #e == 0 then return {'GONE'} end
  local m = cjson.decode(e[1][2][2])
  if m.id ~= mid then return {'GONE'} end
  c = {st = m.st, sa = m.at}
end
local to = tonumber(ARGV[5])
if not advances(c.st, to) then return {'SAME', cjson.encode(c)} end
c.st, c.sa, c.ec, c.em = to, tonumber(ARGV[7]), nil, nil
if ARGV[6] ~= '' then c.pm = ARGV[6] end
if ARGV[8] ~= '' then c.ec = ARGV[8] end
if ARGV[9] ~= '' then c.em = ARGV[9] end
local js = cjson.encode(c)
redis.call('HSET', KEYS[1], mid, js)
expire(KEYS[1], tonumber(ARGV[12]))
c.id, c.seq = mid, tonumber(seq)
redis.call('PUBLISH', ARGV[10], 's' .. cjson.encode(c))
return {'MOVED', js}
