-- start_session: sweep, count (in all and of the client), replace and insert in one
-- script, so no number of clients can over-allocate seats (a script runs atomically:
-- nothing interleaves with it).
-- KEYS[1] seats zset, KEYS[2] sessions zset, KEYS[3] session hash,
-- KEYS[4] refresh index, KEYS[5] client's session set, KEYS[6] client's seats zset,
-- KEYS[7] what this start replaced
-- ARGV: prefix, now, seat_limit ('' = unlimited), sid, holds_seat ('1'|'0'), expires_at,
--       ttl_ms, client_id, subject, scope, refresh_hash, created_at, sweep_limit,
--       reclaim_before (now - skew: seats of sessions expired at or before it are free),
--       client_cap ('' = none), replace_oldest ('1'|'0'), now_plus_1, epoch candidate,
--       how long (ms) to keep what was replaced for a resend
-- Returns {1, sid, HGETALL, ...} when stored (with the sessions it ended, oldest first),
-- or {0, 'client'|'pool'} when refused.
local prefix, now, seat_limit, sid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local holds_seat, expires_at, ttl_ms = ARGV[5], ARGV[6], ARGV[7]
local client_cap, replace_oldest = ARGV[15], ARGV[16] == '1'

-- A retry of a call that ran but whose reply was lost (redis-py resends a command when the
-- connection drops) finds its own session: the refresh hash is a secret only that caller
-- knows. Report the same success (and what it replaced) instead of counting the session
-- against itself or replacing more.
if redis.call('HGET', KEYS[3], 'refresh_hash') == ARGV[11] then
  local reply = {1}
  local replaced = redis.call('GET', KEYS[7])
  if replaced then
    for _, item in ipairs(cjson.decode(replaced)) do
      reply[#reply + 1] = item
    end
  end
  return reply
end
ensure_seat_index(prefix)
local reclaim_before = ARGV[14]
sweep_sessions(prefix, reclaim_before, tonumber(ARGV[13]))
-- Members of the client's set whose session hash is gone (expired by TTL, or lost) leave
-- it: a few drawn at random per start keep the set near the client's live sessions even
-- when the sessions index no longer names them. Their session_client entry stays for the
-- sweep, which needs it to take such a session out of its client's seat index.
for _, member in ipairs(redis.call('SRANDMEMBER', KEYS[5], 4)) do
  if redis.call('EXISTS', prefix .. 'session:' .. member) == 0 then
    redis.call('SREM', KEYS[5], member)
    if not redis.call('ZSCORE', KEYS[2], member) then
      redis.call('HDEL', prefix .. 'session_client', member)
    end
  end
end

local ending = {}
if holds_seat == '1' then
  local mine = {}
  if client_cap ~= '' then
    -- The client's seat holders with their created_at; one whose hash is gone holds
    -- nothing any more and leaves every index.
    for _, other in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
      local created = redis.call('HGET', prefix .. 'session:' .. other, 'created_at')
      if created then
        mine[#mine + 1] = {other, tonumber(created)}
      else
        drop_session(prefix, other)
      end
    end
  end
  -- After the sweep every member counts (score > reclaim_before).
  local held = redis.call('ZCARD', KEYS[1])
  if client_cap ~= '' then
    local cap = tonumber(client_cap)
    local excess = #mine - cap + 1
    if excess > 0 then
      if not replace_oldest or cap <= 0 then
        return {0, 'client'}
      end
      local oldest = mine
      table.sort(oldest, function(a, b)
        if a[2] ~= b[2] then
          return a[2] < b[2]
        end
        return bytes_before(a[1], b[1])
      end)
      for i = 1, excess do
        ending[i] = oldest[i][1]
      end
      held = held - excess
    end
  end
  -- Checked before anything ends: a refused start changes nothing. (The pool may hold
  -- more than seat_limit after the limit was lowered; then even replacing leaves none.)
  if seat_limit ~= '' and held >= tonumber(seat_limit) then
    return {0, 'pool'}
  end
end

local reply = {1}
local replaced = {}
for _, other in ipairs(ending) do
  local flat = end_one(prefix, other, now, ARGV[17], ARGV[18])
  reply[#reply + 1] = other
  reply[#reply + 1] = flat
  replaced[#replaced + 1] = other
  replaced[#replaced + 1] = flat
end
if #ending > 0 then
  sweep_revoked(prefix, now, tonumber(ARGV[13]))
  redis.call('SET', KEYS[7], cjson.encode(replaced), 'PX', ARGV[19])
end

redis.call('HSET', KEYS[3],
  'client_id', ARGV[8], 'subject', ARGV[9], 'scope', ARGV[10], 'holds_seat', holds_seat,
  'refresh_hash', ARGV[11], 'created_at', ARGV[12], 'expires_at', expires_at)
redis.call('PEXPIRE', KEYS[3], ttl_ms)
redis.call('SET', KEYS[4], sid, 'PX', ttl_ms)
redis.call('ZADD', KEYS[2], expires_at, sid)
if holds_seat == '1' then
  redis.call('ZADD', KEYS[1], expires_at, sid)
  redis.call('ZADD', KEYS[6], expires_at, sid)
end
redis.call('SADD', KEYS[5], sid)
redis.call('HSET', prefix .. 'session_client', sid, ARGV[8])
return reply
