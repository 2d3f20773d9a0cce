-- This script reads the head of a session's chatbot queue (docs/design.md
-- §9): the message to deliver to the chatbot next, with the session and
-- its contact. KEYS[1] the queue, bq:<sid>: "<message id> <seq> <chatbot
-- id>" in arrival order. ARGV slotp, session id, now. Messages for a
-- chatbot the session no longer runs are dropped, and the whole queue when
-- the session is no longer BOT. Answers {'OK', queue entry, message JSON,
-- session record JSON, contact record JSON or ''}, or {'GONE'}: nothing is
-- queued.
local slotp, sid = ARGV[1], ARGV[2]
local rec = hgetall(slotp .. 's:' .. sid)
if not rec or state(rec, tonumber(ARGV[3])) ~= 2 then
  redis.call('DEL', KEYS[1])
  return {'GONE'}
end
while true do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head then return {'GONE'} end
  local mid, seq, bot = string.match(head, '^(%S+) (%d+) (%S+)$')
  if bot == rec.bot then
    local e = redis.call('XRANGE', slotp .. 'h:' .. sid, seq .. '-0', seq .. '-0')
    if #e > 0 then
      local ct = hgetall(slotp .. 'c:' .. rec.tn .. ':' .. rec.pf .. ':' .. rec.us)
      local cts = ''
      if ct then cts = cjson.encode(ct) end
      return {'OK', head, e[1][2][2], cjson.encode(rec), cts}
    end
  end
  redis.call('LPOP', KEYS[1])
end
