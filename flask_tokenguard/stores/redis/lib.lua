-- Helpers shared by the RedisStore scripts: RedisStore prepends this file to each script
-- before registering it, because a Redis script cannot include another.
--
-- Key layout under the store's prefix P (P carries one hash tag, so every key of a store
-- lives in one Cluster slot; keys built here from P are in the slot of the KEYS passed):
--   P..'session:'..sid          hash   one session's fields
--   P..'sessions'               zset   sid -> expires_at, every session (the sweep's index)
--   P..'seats'                  zset   sid -> expires_at, seat-holding sessions only
--   P..'client_seats:'..cid     zset   sid -> expires_at, one client's seat holders: the
--                                      same members as 'seats' of that client, always
--                                      (every script that writes one writes the other)
--   P..'seat_index'             string '1' once 'client_seats' covers every seat (a
--                                      store written before it existed is indexed once)
--   P..'client_sessions:'..cid  set    sids of one client
--   P..'session_client'         hash   sid -> cid, so that a session whose hash expired
--                                      by TTL still leaves its client's set when swept
--   P..'refresh:'..hash         string sid whose *current* refresh hash this is
--   P..'used:'..hash            string sid that already used this refresh hash (replays)
--   P..'used_by:'..sid          set    used hashes of one session, to clean them up
--   P..'revoked'                zset   id -> expires_at of the revocation
--   P..'revoked_seq'            zset   id -> revocation seq
--   P..'revocation_seq'         string counter
--   P..'revocation_epoch'       string random id of the counter's current run, created
--                                      with the counter (see ensure_epoch)
--   P..'replaced:'..sid         string the sessions start_session ended for sid, kept
--                                      a minute so that a resend can report them again
--   P..'admin:'..hash           hash   an admin console session: username, created_at,
--                                      expires_at
--   P..'events'                 list   recent security events as JSON, newest first
--   P..'failures:'..key         hash   lockout counter: count, until (caller's time)
--
-- Numbers: times travel as the strings Python wrote (repr of a float) and are only ever
-- compared after tonumber(); they are never turned back into strings here, because Lua's
-- tostring() keeps 14 digits and would round epoch times with microseconds.

local function to_table(flat)
  local t = {}
  for i = 1, #flat, 2 do
    t[flat[i]] = flat[i + 1]
  end
  return t
end

-- Delete a session and every index entry that points at it; return its HGETALL (empty
-- when the hash is gone). The zset members go even without the hash, so an index never
-- outlives its session.
local function drop_session(prefix, sid)
  local key = prefix .. 'session:' .. sid
  local flat = redis.call('HGETALL', key)
  local client_id = redis.call('HGET', prefix .. 'session_client', sid)
  if #flat > 0 then
    local s = to_table(flat)
    local refresh_key = prefix .. 'refresh:' .. s['refresh_hash']
    if redis.call('GET', refresh_key) == sid then
      redis.call('DEL', refresh_key)
    end
    client_id = s['client_id']
  end
  if client_id then
    redis.call('SREM', prefix .. 'client_sessions:' .. client_id, sid)
  end
  redis.call('HDEL', prefix .. 'session_client', sid)
  if client_id then
    redis.call('ZREM', prefix .. 'client_seats:' .. client_id, sid)
  end
  local used_by = prefix .. 'used_by:' .. sid
  for _, h in ipairs(redis.call('SMEMBERS', used_by)) do
    local used_key = prefix .. 'used:' .. h
    if redis.call('GET', used_key) == sid then
      redis.call('DEL', used_key)
    end
  end
  redis.call('DEL', used_by, key)
  redis.call('ZREM', prefix .. 'seats', sid)
  redis.call('ZREM', prefix .. 'sessions', sid)
  return flat
end

-- The revocation epoch, created with the counter: when either key is missing (a new store,
-- a reset, or keys lost to a restart without persistence, a failover or a FLUSH), the
-- candidate (random, drawn by the caller) becomes the epoch, so that processes holding a
-- seq of the lost counter know to read every revocation again. A counter that survived
-- alone (a store from before epochs) keeps its value.
local function ensure_epoch(prefix, candidate)
  local epoch_key = prefix .. 'revocation_epoch'
  local epoch = redis.call('GET', epoch_key)
  if epoch and redis.call('EXISTS', prefix .. 'revocation_seq') == 1 then
    return epoch
  end
  redis.call('SET', prefix .. 'revocation_seq', 0, 'NX')
  redis.call('SET', epoch_key, candidate)
  return candidate
end

-- Append one revocation: bump the counter and index the id by expiry and by seq.
-- exp is a string (see above); candidate as for ensure_epoch.
local function add_revocation(prefix, id, exp, candidate)
  ensure_epoch(prefix, candidate)
  local seq = redis.call('INCR', prefix .. 'revocation_seq')
  redis.call('ZADD', prefix .. 'revoked', exp, id)
  redis.call('ZADD', prefix .. 'revoked_seq', seq, id)
  return seq
end

-- End one session: drop it and record its id as revoked until max(expires_at, now + 1),
-- as MemoryStore does. Returns the HGETALL of what ended (empty if nothing did).
local function end_one(prefix, sid, now, now_plus_1, candidate)
  local flat = drop_session(prefix, sid)
  if #flat == 0 then
    return flat
  end
  local expires_at = to_table(flat)['expires_at']
  local exp = now_plus_1
  if tonumber(expires_at) > tonumber(now_plus_1) then
    exp = expires_at
  end
  add_revocation(prefix, sid, exp, candidate)
  return flat
end

-- Drop revocations that expired at or before now, at most limit per call; reads filter by
-- now anyway, so a bounded sweep keeps every script short without changing results.
local function sweep_revoked(prefix, now, limit)
  local ids = redis.call('ZRANGEBYSCORE', prefix .. 'revoked', '-inf', now, 'LIMIT', 0, limit)
  if #ids > 0 then
    redis.call('ZREM', prefix .. 'revoked', unpack(ids))
    redis.call('ZREM', prefix .. 'revoked_seq', unpack(ids))
  end
end

-- Drop sessions that expired at or before now (bounded, as above) and every expired seat,
-- from the pool's index and from its client's alike. start_session passes now - skew, so
-- that seats are reclaimed only once expired on every host's clock.
local function sweep_sessions(prefix, now, limit)
  local ids = redis.call('ZRANGEBYSCORE', prefix .. 'sessions', '-inf', now, 'LIMIT', 0, limit)
  for _, sid in ipairs(ids) do
    drop_session(prefix, sid)
  end
  local seats = prefix .. 'seats'
  for _, sid in ipairs(redis.call('ZRANGEBYSCORE', seats, '-inf', now)) do
    local client_id = redis.call('HGET', prefix .. 'session_client', sid)
      or redis.call('HGET', prefix .. 'session:' .. sid, 'client_id')
    if client_id then
      redis.call('ZREM', prefix .. 'client_seats:' .. client_id, sid)
    end
  end
  redis.call('ZREMRANGEBYSCORE', seats, '-inf', now)
end

-- Index every seat by client once, for a store whose seats were taken before the
-- per-client index existed; later scripts keep the two in step.
local function ensure_seat_index(prefix)
  if not redis.call('SET', prefix .. 'seat_index', '1', 'NX') then
    return
  end
  local seats = redis.call('ZRANGE', prefix .. 'seats', 0, -1, 'WITHSCORES')
  for i = 1, #seats, 2 do
    local sid = seats[i]
    local client_id = redis.call('HGET', prefix .. 'session_client', sid)
      or redis.call('HGET', prefix .. 'session:' .. sid, 'client_id')
    if client_id then
      redis.call('ZADD', prefix .. 'client_seats:' .. client_id, seats[i + 1], sid)
    end
  end
end

-- Whether string a sorts before b byte by byte, as Python compares ASCII ids (Lua's '<'
-- follows the server's locale).
local function bytes_before(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

-- Give a live session's keys a fresh safety-net TTL (milliseconds, relative; see store.py).
local function expire_session(prefix, sid, refresh_hash, ttl_ms)
  redis.call('PEXPIRE', prefix .. 'session:' .. sid, ttl_ms)
  redis.call('PEXPIRE', prefix .. 'refresh:' .. refresh_hash, ttl_ms)
  local used_by = prefix .. 'used_by:' .. sid
  for _, h in ipairs(redis.call('SMEMBERS', used_by)) do
    redis.call('PEXPIRE', prefix .. 'used:' .. h, ttl_ms)
  end
  redis.call('PEXPIRE', used_by, ttl_ms)
end

