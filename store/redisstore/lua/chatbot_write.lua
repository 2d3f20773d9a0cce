-- This script applies a plan decided from chatbotReadScript's answer,
-- unless anything it read has changed since (then CONFLICT: read again).
-- KEYS[1] tuple pointer. ARGV now, tenant, platform, channel, user, plan
-- ('skip', 'reuse', 'close' or 'open'), pointer seen, subject sid, subject
-- version, contact version seen ('' when absent), new sid, chatbot id,
-- session metadata patch, contact metadata patch, greeting suffix, rnd, ttl,
-- ret, limit, slotp, event prefix, idempotency key, fingerprint, idempotency
-- ttl, skip reason, the tenant's activity index ('' on Cluster), the
-- greeting's delivery id ('' for none).
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
  rec = open(slotp, ARGV[11], ARGV[2], ARGV[3], ARGV[4], ARGV[5], '{}', now, ttl, ret, ARGV[26])
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
local m = append(slotp, evp, rec, now, ARGV[1], ARGV[15], ARGV[16], ttl, ret, tonumber(ARGV[19]), nil, ARGV[26])
scheduled(slotp, rec, ARGV[27], ttl, ret)
local res = '{"skip":0,"s":' .. cjson.encode(rec) .. ',"c":' .. cjson.encode(ct) .. ',"m":' .. m ..
  ',"started":' .. tostring(started) .. ',"closed":' .. closed .. '}'
remember(ARGV[22], ARGV[23], now, tonumber(ARGV[24]), res)
return {'OK', res}
