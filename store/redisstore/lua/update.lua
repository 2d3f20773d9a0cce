-- This script changes an active session. KEYS[1] session. ARGV now,
-- tenant, new state (0 = keep), end bot (0/1), keys to remove (JSON array),
-- metadata patch (JSON object), chatbot the update is conditional on ('' =
-- none: otherwise nothing changes unless the session is BOT with it), the
-- most metadata entries the session may then hold (0: no bound; past it,
-- and past what it holds now, TOOMUCH and nothing changed).
local now = tonumber(ARGV[1])
local rec = hgetall(KEYS[1])
if not rec or rec.tn ~= ARGV[2] then return {'NOTFOUND'} end
local st = state(rec, now)
if not active(st) then return {ended(st)} end
if ARGV[7] ~= '' and (st ~= 2 or rec.bot ~= ARGV[7]) then return {'OK', cjson.encode(rec)} end
local md = cjson.decode(rec.md)
local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end
local before = count(md)
for _, k in ipairs(cjson.decode(ARGV[5])) do md[k] = nil end
for k, v in pairs(cjson.decode(ARGV[6])) do md[k] = v end
local most, after = tonumber(ARGV[8]), count(md)
if most > 0 and after > most and after > before then return {'TOOMUCH'} end
local newst, bot = tonumber(ARGV[3]), rec.bot
if ARGV[4] == '1' or newst ~= 0 then bot = ''; st = 1 end
if newst ~= 0 then st = newst end
set(KEYS[1], rec, 'md', cjson.encode(md), 'st', st, 'bot', bot, 'ua', now, 'v', tonumber(rec.v) + 1)
return {'OK', cjson.encode(rec)}
