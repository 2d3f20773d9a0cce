-- This script appends an inbound message, opening the session when needed,
-- and returns the listeners indexed under the session and the user (they
-- share this slot) as match candidates. KEYS[1] session (when named) or
-- tuple pointer. ARGV now, tenant, platform, channel, user, named sid ('' for
-- none), new sid, ttl, ret, limit, rnd, suffix, slotp, event prefix,
-- idempotency key, fingerprint, idempotency ttl, the tenant's activity index
-- ('' on Cluster), the chatbots that run on webhooks (' a b ', or ''), the
-- message's thread ('' for none), the outbox and its attempts ('' on
-- Cluster), the chatbot queue's delivery id, when the user wrote it (ms,
-- InboundMessage.WroteAt). A message of a session such a
-- chatbot runs is queued for it: bq:<sid>, a list of "<message id> <seq>
-- <chatbot id>" (docs/design.md §9); on one server the queue is made due
-- here too, so an ingest whose caller goes away still reaches the bot.
local now, slotp = tonumber(ARGV[1]), ARGV[13]
local prev = idem(ARGV[15], ARGV[16], now)
if prev then return prev end
local ttl, ret = tonumber(ARGV[8]), tonumber(ARGV[9])
local rec, started = nil, false
if ARGV[6] ~= '' then
  rec = hgetall(KEYS[1])
  if not rec or rec.tn ~= ARGV[2] then return {'NOTFOUND'} end
  local st = state(rec, now)
  if not active(st) then return {ended(st)} end
  if ARGV[5] ~= '' and ARGV[5] ~= rec.us then return {'MISMATCH'} end
else
  local cur = redis.call('GET', KEYS[1])
  if cur then
    rec = hgetall(slotp .. 's:' .. cur)
    if rec and not active(state(rec, now)) then rec = nil end
  end
  if not rec then
    rec = open(slotp, ARGV[7], ARGV[2], ARGV[3], ARGV[4], ARGV[5], '{}', now, ttl, ret, ARGV[18])
    started = true
  end
end
local m = append(slotp, ARGV[14], rec, now, ARGV[1], ARGV[12], ARGV[11], ttl, ret, tonumber(ARGV[10]), rec.us, ARGV[18])
if num(rec.st) == 2 and rec.bot ~= '' and string.find(ARGV[19], ' ' .. rec.bot .. ' ', 1, true) then
  local bq = slotp .. 'bq:' .. rec.id
  redis.call('RPUSH', bq, rec.lid .. ' ' .. itoa(num(rec.seq)) .. ' ' .. rec.bot)
  expire(bq, ttl + ret)
  if ARGV[21] ~= '' then
    local member = ARGV[2] .. ' ' .. rec.id .. ' ' .. ARGV[23]
    redis.call('ZADD', ARGV[21], 'NX', now, member)
    redis.call('HSETNX', ARGV[22], member, 0)
  end
end
-- The user's last word: WhatsApp's reply window runs from the newest
-- (a message delivered late keeps its own time), and replies go to its
-- thread.
set(slotp .. 's:' .. rec.id, rec, 'li', itoa(math.max(num(rec.li or 0), tonumber(ARGV[24]))), 'th', ARGV[20])
local res = '{"m":' .. m .. ',"s":' .. cjson.encode(rec) .. ',"started":' .. tostring(started) .. '}'
remember(ARGV[15], ARGV[16], now, tonumber(ARGV[17]), res)
local out = {'OK', res}
for _, k in ipairs({slotp .. 'x:s:' .. rec.tn .. ':' .. rec.id, slotp .. 'x:u:' .. rec.tn .. ':' .. rec.us}) do
  for _, mem in ipairs(redis.call('SMEMBERS', k)) do out[#out + 1] = mem end
end
return out
