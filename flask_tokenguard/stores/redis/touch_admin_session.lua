-- touch_admin_session: read, compare with the caller's now and extend in one script, so
-- that a session ended meanwhile is never brought back.
-- KEYS[1] the admin session hash
-- ARGV: now, expires_at, ttl_ms
-- Returns the updated HGETALL, or nil when there is no live session (an expired one is
-- deleted).
local flat = redis.call('HGETALL', KEYS[1])
if #flat == 0 then
  return false
end
if tonumber(to_table(flat)['expires_at']) <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return false
end
redis.call('HSET', KEYS[1], 'expires_at', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('HGETALL', KEYS[1])
