-- find_refresh: read the index and the session in one script, so a concurrent rotation
-- cannot be seen half done.
-- KEYS[1] refresh index of the hash, KEYS[2] used index of the hash
-- ARGV: prefix, refresh_hash, now
-- Returns {1, sid, HGETALL} for the current hash, {0, sid, HGETALL} for a used one, or nil.
local prefix, refresh_hash, now = ARGV[1], ARGV[2], tonumber(ARGV[3])

local function live(sid, want_current)
  if not sid then
    return nil
  end
  local flat = redis.call('HGETALL', prefix .. 'session:' .. sid)
  if #flat == 0 then
    return nil
  end
  local s = to_table(flat)
  if tonumber(s['expires_at']) <= now then
    return nil
  end
  if want_current and s['refresh_hash'] ~= refresh_hash then
    return nil
  end
  return flat
end

local sid = redis.call('GET', KEYS[1])
local flat = live(sid, true)
if flat then
  return {1, sid, flat}
end
sid = redis.call('GET', KEYS[2])
flat = live(sid, false)
if flat then
  return {0, sid, flat}
end
return false
