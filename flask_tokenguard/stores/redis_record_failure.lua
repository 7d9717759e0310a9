-- record_failure: read, compare with the caller's now and count in one script, so that
-- concurrent failures of one key each get their own count.
-- KEYS[1] the key's failures hash (fields count, until)
-- ARGV: now, until of a new window (now + window), ttl_ms
-- Returns {count, until}; until is the string Python wrote (see redis_lib.lua).
local now, new_until, ttl_ms = ARGV[1], ARGV[2], ARGV[3]
-- (Named ends_at: until is a Lua keyword.)
local ends_at = redis.call('HGET', KEYS[1], 'until')
if ends_at and tonumber(ends_at) > tonumber(now) then
  return {redis.call('HINCRBY', KEYS[1], 'count', 1), ends_at}
end
-- No window, or it has ended: a new one starts with this failure. The TTL is only a
-- safety net (relative, the window plus a margin): decisions compare until with now.
redis.call('HSET', KEYS[1], 'count', 1, 'until', new_until)
redis.call('PEXPIRE', KEYS[1], ttl_ms)
return {1, new_until}
