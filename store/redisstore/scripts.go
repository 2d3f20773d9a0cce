package redisstore

import "github.com/redis/go-redis/v9"

// The Lua scripts. Each runs atomically on one Redis node. KEYS[1] routes the
// script; the other keys a script touches are built from ARGV slot prefixes
// and always share KEYS[1]'s hash tag, so every script stays within one
// hash slot (and so works on Redis Cluster).
//
// Times are Unix milliseconds from the store's clock, passed as ARGV, so that
// expiry follows the injected clock exactly; Redis TTLs only reclaim memory,
// with the retention periods as margin. Scripts answer {code, payload...};
// the codes are the constants in redisstore.go.

// prelude is shared by every script.
const prelude = `
local function hgetall(key)
  local a = redis.call('HGETALL', key)
  if #a == 0 then return nil end
  local t = {}
  for i = 1, #a, 2 do t[a[i]] = a[i + 1] end
  return t
end
-- hmget reads the given fields of a hash whose first field always exists,
-- or nil if the hash does not.
local function hmget(key, fields)
  local a = redis.call('HMGET', key, unpack(fields))
  if not a[1] then return nil end
  local t = {}
  for i = 1, #fields do
    if a[i] then t[fields[i]] = a[i] end
  end
  return t
end
-- num reads a number from a string (or a number). tonumber parses a string
-- twice (lua_isnumber, then lua_tonumber: each a strtod costing more than
-- the rest of a line); arithmetic coercion parses it once. For the hot
-- paths: unlike tonumber, it raises an error on a non-number.
local function num(s) return s + 0 end
local function expire(key, ms)
  ms = math.floor(ms)
  if ms < 1 then ms = 1 end
  redis.call('PEXPIRE', key, ms)
end
-- set writes fields to a hash and mirrors them, as strings, into rec.
local function set(key, rec, ...)
  local a = {...}
  for i = 1, #a, 2 do
    a[i + 1] = tostring(a[i + 1])
    rec[a[i]] = a[i + 1]
  end
  redis.call('HSET', key, unpack(a))
end
-- itoa formats an integer. tostring, and concatenating a number, format it
-- as floating point (%.14g), which costs Redis four times as much.
local function itoa(n) return string.format('%d', n) end
local function active(st) return st == 1 or st == 2 or st == 3 end
-- The state at now: an active session past its expiry has expired (5).
local function state(rec, now)
  local st = num(rec.st)
  if active(st) and now >= num(rec.ex) then return 5 end
  return st
end
local function ended(st)
  if st == 5 then return 'EXPIRED' end
  return 'CLOSED'
end
-- The id layout of ids.MessageWithRandom: a uuidv7 carrying seq as counter.
-- Each conversion is a sprintf costing more than the arithmetic, and all
-- but the last changes only with ms or every 65536 seqs: a call formats
-- that prefix once, and each message its low 16 bits of seq.
local idms, idhi, idpre
local function msgid(ms, seq, rnd)
  local hi = math.floor(seq / 65536)
  if ms ~= idms or hi ~= idhi then
    idms, idhi = ms, hi
    idpre = string.format('msg_%08x-%04x-7%03x-%x%03x-', math.floor(ms / 65536), ms % 65536,
      math.floor(hi / 16384) % 4096, 8 + math.floor(hi / 4096) % 4, hi % 4096)
  end
  return idpre .. string.format('%04x', seq % 65536) .. rnd
end
local function merge(json, patch)
  if patch == '' or patch == '{}' then return json end
  local m = cjson.decode(json)
  for k, v in pairs(cjson.decode(patch)) do m[k] = v end
  return cjson.encode(m)
end
-- idem returns the remembered result for an idempotency key: nil, or
-- {'REPLAY', result} / {'REUSED'}.
local function idem(key, fp, now)
  if key == '' then return nil end
  local raw = redis.call('GET', key)
  if not raw then return nil end
  local e = cjson.decode(raw)
  if now >= e.exp then return nil end
  if e.fp ~= fp then return {'REUSED'} end
  return {'REPLAY', e.res}
end
local function remember(key, fp, now, ttl, res)
  if key == '' then return end
  redis.call('SET', key, cjson.encode({fp = fp, exp = now + ttl, res = res}), 'PX', math.floor(ttl + 60000))
end
local function pointer(slotp, rec)
  return slotp .. 'a:' .. rec.tn .. ':' .. rec.pf .. ':' .. rec.ch .. ':' .. rec.us
end
-- open creates a session record, its active pointer and (if absent) its
-- contact, and returns the record.
local function open(slotp, sid, tn, pf, ch, us, md, now, ttl, ret)
  local rec = {}
  local key = slotp .. 's:' .. sid
  set(key, rec, 'id', sid, 'tn', tn, 'pf', pf, 'ch', ch, 'us', us, 'st', 1, 'bot', '', 'md', md,
    'ca', now, 'ua', now, 'la', now, 'ex', now + ttl, 'seq', 0, 'lid', '', 'lms', 0, 'v', 0)
  expire(key, ttl + ret)
  redis.call('SET', pointer(slotp, rec), sid, 'PX', math.floor(ttl + ret))
  local ck = slotp .. 'c:' .. tn .. ':' .. pf .. ':' .. us
  if redis.call('HSETNX', ck, 'ca', now) == 1 then
    redis.call('HSET', ck, 'ua', now, 'md', '{}', 'v', 0)
  end
  expire(ck, ttl + ret)
  return rec
end
-- close ends an active session and tells its watchers.
local function close(slotp, evp, rec, now, ret)
  local key = slotp .. 's:' .. rec.id
  set(key, rec, 'st', 4, 'bot', '', 'ua', now, 'ex', now, 'v', tonumber(rec.v) + 1)
  expire(key, ret)
  expire(slotp .. 'h:' .. rec.id, ret)
  local pk = pointer(slotp, rec)
  if redis.call('GET', pk) == rec.id then redis.call('DEL', pk) end
  redis.call('PUBLISH', evp .. rec.tn .. ':' .. rec.id, 'end')
end
-- entry adds a message to a session's history and publishes it, updating
-- rec but not writing it: save does, and trims the history to its limit,
-- once for any number of entries (an exact trim on every XADD costs three
-- times the XADD; the script is atomic, so nobody sees the history longer).
-- Until then the counters entry changes are numbers in rec, not strings.
-- now is the time as a number and nows as the caller's string of it (one
-- string.format fewer). suffix is the message's JSON after the fields the
-- script assigns (a field list ending with '}'); from, when given, is written
-- as the sender. ret may be a string: it is only added to. It returns the
-- message and its seq as a string.
--
-- work[rec] is this call's working state for a record, kept out of rec
-- (which scripts return encoded): what entry derives from it once, and
-- trim, the limit save must trim the history to, while entries are unsaved.
local work = {}
local function entry(slotp, evp, rec, now, nows, suffix, rnd, ttl, ret, limit, from)
  local w = work[rec]
  if not w then
    w = {
      -- The session's fields of a message, encoded.
      head = ',"sid":' .. cjson.encode(rec.id) .. ',"pf":' .. cjson.encode(rec.pf) .. ',"ch":' .. cjson.encode(rec.ch),
      events = evp .. rec.tn .. ':' .. rec.id,
      history = slotp .. 'h:' .. rec.id,
      gx = num(rec.gx or 0),
    }
    work[rec] = w
  end
  local seq = num(rec.seq) + 1
  local lms = math.max(now, num(rec.lms))
  local id = msgid(lms, seq, rnd)
  local seqs = itoa(seq)
  local m = '{"id":"' .. id .. '","seq":' .. seqs .. w.head .. ',"at":' .. nows .. ','
  if from then m = m .. '"from":' .. cjson.encode(from) .. ',' end
  m = m .. suffix
  local v = num(rec.v) + 1
  -- The Redis TTLs only reclaim memory and carry the ended-session
  -- retention as margin, so refreshing them hourly, not per message, is
  -- enough and saves four writes on the hot path.
  local refresh = now - w.gx >= 3600000
  redis.call('XADD', w.history, seqs .. '-0', 'm', m)
  -- From here rec must be saved, whatever fails next.
  w.trim = limit
  rec.seq, rec.lid, rec.lms, rec.la, rec.ex, rec.v = seq, id, lms, nows, now + ttl, v
  if refresh then
    w.gx, rec.gx = now, nows
    expire(slotp .. 's:' .. rec.id, ttl + ret)
    expire(w.history, ttl + ret)
    redis.call('PEXPIRE', pointer(slotp, rec), math.floor(ttl + ret))
    redis.call('PEXPIRE', slotp .. 'c:' .. rec.tn .. ':' .. rec.pf .. ':' .. rec.us, math.floor(ttl + ret))
  end
  redis.call('PUBLISH', w.events, m)
  return m, seqs
end
-- save writes what entry changed in rec, the record at key, and trims its
-- history, if entry added anything since the last save.
local function save(key, rec)
  local w = work[rec]
  if not (w and w.trim) then return end
  redis.call('XTRIM', w.history, 'MAXLEN', w.trim)
  w.trim = nil
  -- la and gx are the callers' strings already.
  rec.seq, rec.lms, rec.ex, rec.v = itoa(rec.seq), itoa(rec.lms), itoa(rec.ex), itoa(rec.v)
  redis.call('HSET', key, 'seq', rec.seq, 'lid', rec.lid, 'lms', rec.lms, 'la', rec.la,
    'ex', rec.ex, 'v', rec.v, 'gx', rec.gx)
end
-- append is entry and save, for one message.
local function append(slotp, evp, rec, now, nows, suffix, rnd, ttl, ret, limit, from)
  local m = entry(slotp, evp, rec, now, nows, suffix, rnd, ttl, ret, limit, from)
  save(slotp .. 's:' .. rec.id, rec)
  return m
end
`

func script(body string) *redis.Script { return redis.NewScript(prelude + body) }

// createScript opens a session unless one is active for the tuple.
// KEYS[1] tuple pointer. ARGV slotp, now, ttl, ret, tenant, platform,
// channel, user, new sid, metadata JSON.
var createScript = script(`
local slotp, now, ttl, ret = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cur = redis.call('GET', KEYS[1])
if cur then
  local rec = hgetall(slotp .. 's:' .. cur)
  if rec and active(state(rec, now)) then return {'EXISTS'} end
end
local rec = open(slotp, ARGV[9], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[10], now, ttl, ret)
return {'OK', cjson.encode(rec)}
`)

// updateScript changes an active session. KEYS[1] session. ARGV now,
// tenant, new state (0 = keep), end bot (0/1), keys to remove (JSON array),
// metadata patch (JSON object).
var updateScript = script(`
local now = tonumber(ARGV[1])
local rec = hgetall(KEYS[1])
if not rec or rec.tn ~= ARGV[2] then return {'NOTFOUND'} end
local st = state(rec, now)
if not active(st) then return {ended(st)} end
local md = cjson.decode(rec.md)
for _, k in ipairs(cjson.decode(ARGV[5])) do md[k] = nil end
for k, v in pairs(cjson.decode(ARGV[6])) do md[k] = v end
local newst, bot = tonumber(ARGV[3]), rec.bot
if ARGV[4] == '1' or newst ~= 0 then bot = ''; st = 1 end
if newst ~= 0 then st = newst end
set(KEYS[1], rec, 'md', cjson.encode(md), 'st', st, 'bot', bot, 'ua', now, 'v', tonumber(rec.v) + 1)
return {'OK', cjson.encode(rec)}
`)

// closeScript ends a session (an ended one is returned as it is). KEYS[1]
// session. ARGV now, tenant, ret, slotp, event prefix.
var closeScript = script(`
local now = tonumber(ARGV[1])
local rec = hgetall(KEYS[1])
if not rec or rec.tn ~= ARGV[2] then return {'NOTFOUND'} end
if active(state(rec, now)) then close(ARGV[4], ARGV[5], rec, now, tonumber(ARGV[3])) end
return {'OK', cjson.encode(rec)}
`)

// postScript appends outbound messages, any number in one call (the
// batcher merges concurrent posts into one call; see batch.go): for each,
// idempotency, session state, history, TTLs and fan-out. A session posted
// to several times is read once and written once. KEYS[i] is post i's
// session. ARGV ttl, ret, limit, event prefix, idempotency ttl, then
// 7 per post: slotp, now, tenant, rnd, suffix, idempotency key (”
// for none), fingerprint. The answer holds one reply per post, in order:
// for a posted message the string "<id> <seq> <platform> <channel>" (one
// string, because Redis converts each table in a reply field by field),
// for anything else a table {code, payload...}.
var postScript = script(`
-- ret and the idempotency ttl stay strings: they are only added to, and
-- only by an hourly refresh or a post with a key.
local ttl, ret, limit, evp, ittl = num(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5]
-- The record fields entry and save use: HGETALL would bring the metadata
-- too, on every call.
local fields = {'id', 'tn', 'pf', 'ch', 'us', 'st', 'ex', 'seq', 'lms', 'v', 'gx'}
local recs, out = {}, {}
local function post(key, slotp, nows, tn, rnd, suffix, ik, fp)
  local now = num(nows)
  local prev = idem(ik, fp, now)
  if prev then return prev end
  local rec = recs[key]
  if rec == nil then
    rec = hmget(key, fields) or false
    -- As numbers once, not per post.
    if rec then rec.st, rec.ex = num(rec.st), num(rec.ex) end
    recs[key] = rec
  end
  if not rec or rec.tn ~= tn then return {'NOTFOUND'} end
  local st = state(rec, now)
  if not active(st) then return {ended(st)} end
  local m, seqs = entry(slotp, evp, rec, now, nows, suffix, rnd, ttl, ret, limit)
  remember(ik, fp, now, ittl, m)
  -- Only what the caller does not have, as one string (see postAnswer).
  return rec.lid .. ' ' .. seqs .. ' ' .. rec.pf .. ' ' .. rec.ch
end
for i, key in ipairs(KEYS) do
  local a = 5 + (i - 1) * 7
  local ok, res = pcall(post, key, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5],
    ARGV[a + 6], ARGV[a + 7])
  if not ok then
    res = {'ERROR', type(res) == 'table' and tostring(res.err) or tostring(res)}
  end
  out[i] = res
end
for key, rec in pairs(recs) do
  if rec then save(key, rec) end
end
return out
`)

// postCommon is the number of ARGV postScript takes once, before the
// posts' own; postEach, the number each post adds.
const postCommon, postEach = 5, 7

// ingestScript appends an inbound message, opening the session when needed,
// and returns the listeners indexed under the session and the user (they
// share this slot) as match candidates. KEYS[1] session (when named) or
// tuple pointer. ARGV now, tenant, platform, channel, user, named sid (” for
// none), new sid, ttl, ret, limit, rnd, suffix, slotp, event prefix,
// idempotency key, fingerprint, idempotency ttl.
var ingestScript = script(`
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
    rec = open(slotp, ARGV[7], ARGV[2], ARGV[3], ARGV[4], ARGV[5], '{}', now, ttl, ret)
    started = true
  end
end
local m = append(slotp, ARGV[14], rec, now, ARGV[1], ARGV[12], ARGV[11], ttl, ret, tonumber(ARGV[10]), rec.us)
local res = '{"m":' .. m .. ',"s":' .. cjson.encode(rec) .. ',"started":' .. tostring(started) .. '}'
remember(ARGV[15], ARGV[16], now, tonumber(ARGV[17]), res)
local out = {'OK', res}
for _, k in ipairs({slotp .. 'x:s:' .. rec.tn .. ':' .. rec.id, slotp .. 'x:u:' .. rec.tn .. ':' .. rec.us}) do
  for _, mem in ipairs(redis.call('SMEMBERS', k)) do out[#out + 1] = mem end
end
return out
`)

// chatbotReadScript reads what StartChatbot decides on: the named session
// (if any), the tuple's active session and the contact, with their
// versions. KEYS[1] tuple pointer. ARGV now, tenant, named sid, slotp,
// contact key, idempotency key, fingerprint.
var chatbotReadScript = script(`
local now, slotp = tonumber(ARGV[1]), ARGV[4]
local prev = idem(ARGV[6], ARGV[7], now)
if prev then return prev end
local named = ''
if ARGV[3] ~= '' then
  local rec = hgetall(slotp .. 's:' .. ARGV[3])
  if not rec or rec.tn ~= ARGV[2] then return {'NOTFOUND'} end
  named = cjson.encode(rec)
end
local act, ptr = '', redis.call('GET', KEYS[1]) or ''
if ptr ~= '' then
  local rec = hgetall(slotp .. 's:' .. ptr)
  if rec then act = cjson.encode(rec) end
end
local ct = hgetall(ARGV[5])
return {'OK', named, act, ptr, ct and cjson.encode(ct) or ''}
`)

// chatbotWriteScript applies a plan decided from chatbotReadScript's answer,
// unless anything it read has changed since (then CONFLICT: read again).
// KEYS[1] tuple pointer. ARGV now, tenant, platform, channel, user, plan
// ('skip', 'reuse', 'close' or 'open'), pointer seen, subject sid, subject
// version, contact version seen (” when absent), new sid, chatbot id,
// session metadata patch, contact metadata patch, greeting suffix, rnd, ttl,
// ret, limit, slotp, event prefix, idempotency key, fingerprint, idempotency
// ttl, skip reason.
var chatbotWriteScript = script(`
local now, slotp, evp = tonumber(ARGV[1]), ARGV[20], ARGV[21]
local prev = idem(ARGV[22], ARGV[23], now)
if prev then return prev end
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[7] then return {'CONFLICT'} end
local subj = nil
if ARGV[8] ~= '' then
  subj = hgetall(slotp .. 's:' .. ARGV[8])
  if not subj or subj.v ~= ARGV[9] then return {'CONFLICT'} end
end
local ck = slotp .. 'c:' .. ARGV[2] .. ':' .. ARGV[3] .. ':' .. ARGV[5]
local ct = hgetall(ck)
if (ct and ct.v or '') ~= ARGV[10] then return {'CONFLICT'} end
local ttl, ret, plan = tonumber(ARGV[17]), tonumber(ARGV[18]), ARGV[6]
if plan == 'skip' then
  local res = '{"skip":' .. ARGV[25] .. ',"s":' .. cjson.encode(subj) .. ',"c":' .. (ct and cjson.encode(ct) or 'null') .. '}'
  remember(ARGV[22], ARGV[23], now, tonumber(ARGV[24]), res)
  return {'OK', res}
end
local closed, started, rec = 'null', false, subj
if plan == 'close' then
  close(slotp, evp, subj, now, ret)
  closed = cjson.encode(subj)
  rec = nil
end
if plan ~= 'reuse' then
  rec = open(slotp, ARGV[11], ARGV[2], ARGV[3], ARGV[4], ARGV[5], '{}', now, ttl, ret)
  started = true
end
local key = slotp .. 's:' .. rec.id
set(key, rec, 'md', merge(rec.md, ARGV[13]), 'st', 2, 'bot', ARGV[12], 'ua', now)
ct = hgetall(ck)
if not ct then
  -- The contact outlived its TTL under a long-lived session: start it anew.
  redis.call('HSET', ck, 'ca', now, 'md', '{}', 'v', 0)
  ct = hgetall(ck)
end
set(ck, ct, 'md', merge(ct.md, ARGV[14]), 'ua', now, 'v', tonumber(ct.v) + 1)
expire(ck, ttl + ret)
local m = append(slotp, evp, rec, now, ARGV[1], ARGV[15], ARGV[16], ttl, ret, tonumber(ARGV[19]))
local res = '{"skip":0,"s":' .. cjson.encode(rec) .. ',"c":' .. cjson.encode(ct) .. ',"m":' .. m ..
  ',"started":' .. tostring(started) .. ',"closed":' .. closed .. '}'
remember(ARGV[22], ARGV[23], now, tonumber(ARGV[24]), res)
return {'OK', res}
`)

// listenerAddScript stores a pending listener. KEYS[1] listener. ARGV
// tenant, filter JSON, now, deadline (0 = none), idle until, retention.
var listenerAddScript = script(`
if redis.call('EXISTS', KEYS[1]) == 1 then return {'EXISTS'} end
local now, dl, iu = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local rec = {}
set(KEYS[1], rec, 'tn', ARGV[1], 'flt', ARGV[2], 'ca', now, 'dl', dl, 'iu', iu, 'mm', 0, 'oc', 0, 'da', 0)
local life = iu
if dl > 0 then life = dl end
expire(KEYS[1], life - now + tonumber(ARGV[6]))
return {'OK', cjson.encode(rec)}
`)

// indexAddScript adds a listener to its index set and makes sure the set
// outlives it. KEYS[1] index set. ARGV member, ttl.
var indexAddScript = script(`
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = math.floor(tonumber(ARGV[2]))
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return {'OK'}
`)

// listenerGetScript reads a listener at now: a pending one past its deadline
// is decided now (timeout, or filter_mismatch), exactly once; a dropped or
// forgotten one is deleted. KEYS[1] listener. ARGV now, tenant, retention,
// event channel.
var listenerGetScript = script(`
local now, ret = tonumber(ARGV[1]), tonumber(ARGV[3])
local l = hgetall(KEYS[1])
if not l or l.tn ~= ARGV[2] then return {'NOTFOUND'} end
local oc, dl = tonumber(l.oc), tonumber(l.dl)
if oc == 0 and dl > 0 and now >= dl then
  oc = 2
  if l.mm == '1' then oc = 3 end
  set(KEYS[1], l, 'oc', oc, 'da', now)
  expire(KEYS[1], ret)
  redis.call('PUBLISH', ARGV[4], 'r')
  return {'DECIDED', cjson.encode(l)}
end
if (oc == 0 and dl == 0 and now >= tonumber(l.iu)) or (oc ~= 0 and now >= tonumber(l.da) + ret) then
  redis.call('DEL', KEYS[1])
  return {'GONE', cjson.encode(l)}
end
return {'OK', cjson.encode(l)}
`)

// listenerTouchScript extends a pending listener's idle window, and answers
// its filter (so the caller can extend its index set too). KEYS[1]
// listener. ARGV now, tenant, until, retention.
var listenerTouchScript = script(`
local now, untl = tonumber(ARGV[1]), tonumber(ARGV[3])
local l = hgetall(KEYS[1])
if not l or l.tn ~= ARGV[2] then return {'NOTFOUND'} end
local oc, dl = tonumber(l.oc), tonumber(l.dl)
if (oc == 0 and dl == 0 and now >= tonumber(l.iu)) or (oc ~= 0 and now >= tonumber(l.da) + tonumber(ARGV[4])) then
  redis.call('DEL', KEYS[1])
  return {'NOTFOUND'}
end
if oc == 0 and dl == 0 and untl > tonumber(l.iu) then
  redis.call('HSET', KEYS[1], 'iu', untl)
  expire(KEYS[1], untl - now + tonumber(ARGV[4]))
  return {'EXTENDED', l.flt}
end
return {'OK'}
`)

// resolveScript is the compare-and-set that gives a listener exactly one
// outcome: it records a match, or notes an in-scope mismatch, only while the
// listener is pending and live at now. KEYS[1] listener. ARGV now, 'm'
// (match) or 'x' (mismatch), message JSON, retention, event channel.
var resolveScript = script(`
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
`)
