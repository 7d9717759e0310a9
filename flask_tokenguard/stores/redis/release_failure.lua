-- release_failure: take back one count of a live window, never below 0, in one script.
-- KEYS[1] the key's failures hash (fields count, until, recent; see record_failure.lua)
-- ARGV: now, attempt id (new per call)
-- Returns 1 if a count was taken back, else 0.
--
-- A resend of a call that ran must not take back a second count: its id goes into recent
-- as ' r<id>=count' (the r keeps it apart from record_failure's ids).
local now, attempt = ARGV[1], 'r' .. ARGV[2]
local keep = 16
-- (Named ends_at: until is a Lua keyword.)
local ends_at, count, recent = unpack(redis.call('HMGET', KEYS[1], 'until', 'count', 'recent'))
if not ends_at or tonumber(ends_at) <= tonumber(now) or not count or tonumber(count) <= 0 then
  return 0
end
recent = recent or ''
if string.find(recent, ' ' .. attempt .. '=', 1, true) then
  return 0
end
count = redis.call('HINCRBY', KEYS[1], 'count', -1)
recent = recent .. ' ' .. attempt .. '=' .. count
local _, entries = string.gsub(recent, ' ', ' ')
if entries > keep then
  recent = string.sub(recent, (string.find(recent, ' ', 2, true)))
end
redis.call('HSET', KEYS[1], 'recent', recent)
return 1
