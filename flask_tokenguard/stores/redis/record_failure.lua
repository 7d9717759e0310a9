-- record_failure: read, compare with the caller's now and count in one script, so that
-- concurrent failures of one key each get their own count.
-- KEYS[1] the key's failures hash (fields count, until, recent)
-- ARGV: now, until of a new window (now + window), ttl_ms, attempt id (new per call)
-- Returns {count, until}; until is the string Python wrote (see lib.lua).
--
-- A retry of a call that ran but whose reply was lost (redis-py resends a command when
-- the connection drops) must not count twice: recent keeps the last few attempts of the
-- window as ' id=count' entries, and a known id gets its own count back. A resend
-- follows its original within a second, so a few entries are plenty.
local now, new_until, ttl_ms, attempt = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local keep = 16
-- (Named ends_at: until is a Lua keyword.)
local ends_at, recent = unpack(redis.call('HMGET', KEYS[1], 'until', 'recent'))
if ends_at and tonumber(ends_at) > tonumber(now) then
  recent = recent or ''
  local _, last = string.find(recent, ' ' .. attempt .. '=', 1, true)
  if last then
    return {tonumber(string.match(recent, '^%d+', last + 1)), ends_at}
  end
  local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
  recent = recent .. ' ' .. attempt .. '=' .. count
  local _, entries = string.gsub(recent, ' ', ' ')
  if entries > keep then
    recent = string.sub(recent, (string.find(recent, ' ', 2, true)))
  end
  redis.call('HSET', KEYS[1], 'recent', recent)
  return {count, ends_at}
end
-- No window, or it has ended: a new one starts with this failure. The TTL is only a
-- safety net (relative, the window plus a margin): decisions compare until with now.
redis.call('HSET', KEYS[1], 'count', 1, 'until', new_until, 'recent', ' ' .. attempt .. '=1')
redis.call('PEXPIRE', KEYS[1], ttl_ms)
return {1, new_until}
