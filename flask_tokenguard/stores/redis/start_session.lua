-- start_session: sweep, count and insert in one script, so no number of clients can
-- over-allocate seats (a script runs atomically: nothing interleaves with it).
-- KEYS[1] seats zset, KEYS[2] sessions zset, KEYS[3] session hash,
-- KEYS[4] refresh index, KEYS[5] client's session set
-- ARGV: prefix, now, seat_limit ('' = unlimited), sid, holds_seat ('1'|'0'), expires_at,
--       ttl_ms, client_id, subject, scope, refresh_hash, created_at, sweep_limit,
--       reclaim_before (now - skew: seats of sessions expired at or before it are free)
-- Returns 1 when stored, 0 when no seat is free.
local prefix, now, seat_limit, sid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local holds_seat, expires_at, ttl_ms = ARGV[5], ARGV[6], ARGV[7]

-- A retry of a call that ran but whose reply was lost (redis-py resends a command when the
-- connection drops) finds its own session: the refresh hash is a secret only that caller
-- knows. Report success again instead of counting the session against itself.
if redis.call('HGET', KEYS[3], 'refresh_hash') == ARGV[11] then
  return 1
end
sweep_sessions(prefix, ARGV[14], tonumber(ARGV[13]))
-- Members of the client's set whose session hash is gone (expired by TTL, or lost) leave
-- it: a few drawn at random per start keep the set near the client's live sessions even
-- when the sessions index no longer names them.
for _, member in ipairs(redis.call('SRANDMEMBER', KEYS[5], 4)) do
  if redis.call('EXISTS', prefix .. 'session:' .. member) == 0 then
    redis.call('SREM', KEYS[5], member)
    redis.call('HDEL', prefix .. 'session_client', member)
  end
end
if holds_seat == '1' and seat_limit ~= '' then
  -- After the sweep every member counts (score > reclaim_before).
  if redis.call('ZCARD', KEYS[1]) >= tonumber(seat_limit) then
    return 0
  end
end

redis.call('HSET', KEYS[3],
  'client_id', ARGV[8], 'subject', ARGV[9], 'scope', ARGV[10], 'holds_seat', holds_seat,
  'refresh_hash', ARGV[11], 'created_at', ARGV[12], 'expires_at', expires_at)
redis.call('PEXPIRE', KEYS[3], ttl_ms)
redis.call('SET', KEYS[4], sid, 'PX', ttl_ms)
redis.call('ZADD', KEYS[2], expires_at, sid)
if holds_seat == '1' then
  redis.call('ZADD', KEYS[1], expires_at, sid)
end
redis.call('SADD', KEYS[5], sid)
redis.call('HSET', prefix .. 'session_client', sid, ARGV[8])
return 1
