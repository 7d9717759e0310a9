-- unrotate_refresh: take back a rotation whose new token was never handed out (the
-- replicas did not acknowledge it, or the request failed after it). new_hash is known
-- only to the caller that made it, so while it is still current nobody else has used the
-- session: old_hash becomes current again, and the client's retry with it is a refresh,
-- not a replay. The session keeps the expiry the rotation gave it.
-- KEYS[1] session hash
-- ARGV: prefix, sid, old_hash, new_hash, now
-- Returns 1 when the rotation was taken back, 0 when the session moved on or ended.
local prefix, sid, old_hash, new_hash, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local flat = redis.call('HGETALL', KEYS[1])
if #flat == 0 then
  return 0
end
local s = to_table(flat)
if tonumber(s['expires_at']) <= tonumber(now) then
  return 0
end
if s['refresh_hash'] ~= new_hash or redis.call('GET', prefix .. 'used:' .. old_hash) ~= sid then
  return 0
end
local ttl_ms = redis.call('PTTL', KEYS[1])
if ttl_ms <= 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'refresh_hash', old_hash)
redis.call('DEL', prefix .. 'refresh:' .. new_hash)
redis.call('SET', prefix .. 'refresh:' .. old_hash, sid)
redis.call('DEL', prefix .. 'used:' .. old_hash)
redis.call('SREM', prefix .. 'used_by:' .. sid, old_hash)
expire_session(prefix, sid, old_hash, ttl_ms)
return 1
