-- This script appends outbound messages, any number in one call (the
-- batcher merges concurrent posts into one call; see batch.go): for each,
-- idempotency, session state, history, TTLs and fan-out. A session posted
-- to several times is read once and written once. KEYS[i] is post i's
-- session. ARGV ttl, ret, limit, event prefix, idempotency ttl, then
-- 9 per post: slotp, now, tenant, rnd, suffix, idempotency key (''
-- for none), fingerprint, delivery id ('' for none: see scheduled), the
-- tenant's activity index ('' on Cluster). The answer holds one reply per post, in order:
-- for a posted message the string "<id> <seq> <platform> <thread> <channel>" (one
-- string, because Redis converts each table in a reply field by field),
-- for anything else a table {code, payload...}.
-- ret and the idempotency ttl stay strings: they are only added to, and
-- only by an hourly refresh or a post with a key.
local ttl, ret, limit, evp, ittl = num(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5]
-- The record fields entry and save use: HGETALL would bring the metadata
-- too, on every call.
local fields = {'id', 'tn', 'pf', 'ch', 'us', 'st', 'ex', 'seq', 'lms', 'v', 'gx', 'th'}
local recs, out = {}, {}
local function post(key, slotp, nows, tn, rnd, suffix, ik, fp, did, ak)
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
  local m, seqs = entry(slotp, evp, rec, now, nows, suffix, rnd, ttl, ret, limit, nil, ak)
  scheduled(slotp, rec, did, ttl, ret)
  remember(ik, fp, now, ittl, m)
  -- Only what the caller does not have, as one string (see postAnswer).
  return rec.lid .. ' ' .. seqs .. ' ' .. rec.pf .. ' ' .. (rec.th or '') .. ' ' .. rec.ch
end
for i, key in ipairs(KEYS) do
  local a = 5 + (i - 1) * 9
  local ok, res = pcall(post, key, ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5],
    ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9])
  if not ok then
    res = {'ERROR', type(res) == 'table' and tostring(res.err) or tostring(res)}
  end
  out[i] = res
end
for key, rec in pairs(recs) do
  if rec then save(key, rec) end
end
return out
