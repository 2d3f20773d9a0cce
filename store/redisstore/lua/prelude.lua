-- The prelude: helpers every script shares. scripts.go prepends it to each
-- script before loading it.
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
-- advances is store.MessageStatus.Advances: an outbound message's status
-- moves forward only, PENDING (4) → SENT (5) → DELIVERED (2) → READ (6),
-- or to FAILED (3) from any of them but READ.
local stage = {[4] = 1, [5] = 2, [2] = 3, [6] = 4}
local function advances(from, to)
  local f = stage[from]
  if not f then return false end
  if to == 3 then return from ~= 6 end
  local t = stage[to]
  return t ~= nil and t > f
end
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
local function userIndex(slotp, rec)
  return slotp .. 'su:' .. rec.tn .. ':' .. rec.us
end
-- open creates a session record, its active pointer and (if absent) its
-- contact, indexes it for listing, and returns the record.
local function open(slotp, sid, tn, pf, ch, us, md, now, ttl, ret, ak)
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
  -- A session's records live ttl + ret past its last activity, refreshed
  -- hourly: older index entries name sessions that are gone.
  local gone = now - ttl - ret - 3600000
  local ui = userIndex(slotp, rec)
  redis.call('ZADD', ui, now, sid)
  redis.call('ZREMRANGEBYSCORE', ui, '-inf', gone)
  expire(ui, ttl + ret)
  if ak ~= '' and ak ~= nil then
    redis.call('ZADD', ak, now, sid)
    redis.call('ZREMRANGEBYSCORE', ak, '-inf', gone)
  end
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
  redis.call('PUBLISH', slotp .. evp .. rec.tn .. ':' .. rec.id, 'end')
end
-- entry adds a message to a session's history and publishes it, updating
-- rec but not writing it: save does, and trims the history to its limit,
-- once for any number of entries (an exact trim on every XADD costs three
-- times the XADD; the script is atomic, so nobody sees the history longer).
-- Until then the counters entry changes are numbers in rec, not strings.
-- now is the time as a number and nows as the caller's string of it (one
-- string.format fewer). suffix is the message's JSON after the fields the
-- script assigns (a field list ending with '}'); from, when given, is written
-- as the sender of an inbound message, and otherwise the session's thread
-- (rec.th), if any, as the outbound message's. ret may be a string: it is only added to. It returns the
-- message and its seq as a string.
--
-- work[rec] is this call's working state for a record, kept out of rec
-- (which scripts return encoded): what entry derives from it once, and
-- trim, the limit save must trim the history to, while entries are unsaved.
--
-- ak, when given, is the tenant's activity index (ListSessions), which save
-- moves the session up in; on Cluster it lives in another slot and the
-- caller does.
local work = {}
local function entry(slotp, evp, rec, now, nows, suffix, rnd, ttl, ret, limit, from, ak)
  local w = work[rec]
  if not w then
    w = {
      -- The session's fields of a message, encoded.
      head = ',"sid":' .. cjson.encode(rec.id) .. ',"pf":' .. cjson.encode(rec.pf) .. ',"ch":' .. cjson.encode(rec.ch),
      events = slotp .. evp .. rec.tn .. ':' .. rec.id,
      history = slotp .. 'h:' .. rec.id,
      gx = num(rec.gx or 0),
      ak = ak,
    }
    work[rec] = w
  end
  local seq = num(rec.seq) + 1
  local lms = math.max(now, num(rec.lms))
  local id = msgid(lms, seq, rnd)
  local seqs = itoa(seq)
  local m = '{"id":"' .. id .. '","seq":' .. seqs .. w.head .. ',"at":' .. nows .. ','
  if from then
    m = m .. '"from":' .. cjson.encode(from) .. ','
  elseif rec.th and rec.th ~= '' then
    -- An outbound message goes to the session's thread.
    m = m .. '"th":' .. cjson.encode(rec.th) .. ','
  end
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
    local life = math.floor(ttl + ret)
    expire(slotp .. 's:' .. rec.id, life)
    expire(w.history, life)
    for _, k in ipairs({pointer(slotp, rec), slotp .. 'c:' .. rec.tn .. ':' .. rec.pf .. ':' .. rec.us,
        slotp .. 'dv:' .. rec.id, slotp .. 'ms:' .. rec.id, userIndex(slotp, rec)}) do
      redis.call('PEXPIRE', k, life)
    end
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
  if w.ak ~= '' and w.ak ~= nil then redis.call('ZADD', w.ak, rec.la, rec.id) end
end
-- scheduled records that the message just appended to rec is delivery
-- did's (store.Delivery): the delivery index maps it to the message.
local function scheduled(slotp, rec, did, ttl, ret)
  if did == '' or did == nil then return end
  local k = slotp .. 'dv:' .. rec.id
  redis.call('HSET', k, did, rec.lid .. ' ' .. itoa(num(rec.seq)))
  expire(k, ttl + ret)
end
-- append is entry and save, for one message.
local function append(slotp, evp, rec, now, nows, suffix, rnd, ttl, ret, limit, from, ak)
  local m = entry(slotp, evp, rec, now, nows, suffix, rnd, ttl, ret, limit, from, ak)
  save(slotp .. 's:' .. rec.id, rec)
  return m
end
