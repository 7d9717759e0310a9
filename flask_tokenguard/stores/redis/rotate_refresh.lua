-- rotate_refresh: compare-and-swap of the refresh hash. The check and the writes run in
-- one script, so of two concurrent refreshes with the same token exactly one wins.
-- KEYS[1] session hash
-- ARGV: prefix, sid, old_hash, new_hash, expires_at, now, ttl_ms
-- Returns the updated HGETALL, or nil when the swap did not happen.
local prefix, sid, old_hash, new_hash = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local expires_at, now, ttl_ms = ARGV[5], ARGV[6], ARGV[7]

local flat = redis.call('HGETALL', KEYS[1])
if #flat == 0 then
  return false
end
local s = to_table(flat)
if tonumber(s['expires_at']) <= tonumber(now) then
  return false
end
if s['holds_seat'] == '1' and not redis.call('ZSCORE', prefix .. 'seats', sid) then
  -- Its seat was swept (by a caller with a later now): the session is over.
  return false
end
if s['refresh_hash'] ~= old_hash then
  -- A retry of a call that ran but whose reply was lost (redis-py resends a command when
  -- the connection drops) finds its own swap done: new_hash current, old_hash used by
  -- this session. new_hash is a secret only that caller knows, so this is no replay:
  -- report the same success, or the caller would end the session as replayed.
  local used_by = redis.call('GET', prefix .. 'used:' .. old_hash)
  if s['refresh_hash'] == new_hash and used_by == sid then
    return flat
  end
  return false
end

redis.call('HSET', KEYS[1], 'refresh_hash', new_hash, 'expires_at', expires_at)
local old_key = prefix .. 'refresh:' .. old_hash
if redis.call('GET', old_key) == sid then
  redis.call('DEL', old_key)
end
redis.call('SET', prefix .. 'refresh:' .. new_hash, sid)
redis.call('SET', prefix .. 'used:' .. old_hash, sid)
redis.call('SADD', prefix .. 'used_by:' .. sid, old_hash)
expire_session(prefix, sid, new_hash, ttl_ms)
redis.call('ZADD', prefix .. 'sessions', expires_at, sid)
if s['holds_seat'] == '1' then
  -- Both seat indexes move together, so that the client's never drifts from the pool's.
  redis.call('ZADD', prefix .. 'seats', 'XX', expires_at, sid)
  redis.call('ZADD', prefix .. 'client_seats:' .. s['client_id'], 'XX', expires_at, sid)
end
return redis.call('HGETALL', KEYS[1])
