-- end_sessions: end every session of a client (or all) in one script, so no session that
-- starts meanwhile is half caught.
-- KEYS[1] sessions zset, KEYS[2] the client's session set (or the zset again),
-- KEYS[3] the client's seats zset (or the zset again)
-- ARGV: prefix, client_id ('' = all), now, now_plus_1, sweep_limit, epoch candidate
-- Returns how many live sessions ended.
local prefix, client_id, now, now_plus_1 = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ids
if client_id == '' then
  ids = redis.call('ZRANGE', KEYS[1], 0, -1)
else
  -- Both of the client's indexes, so that a member either one lost is ended all the same.
  ids = redis.call('SMEMBERS', KEYS[2])
  for _, sid in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    ids[#ids + 1] = sid
  end
end
local ended = 0
for _, sid in ipairs(ids) do
  local flat = end_one(prefix, sid, now, now_plus_1, ARGV[6])
  if #flat > 0 and tonumber(to_table(flat)['expires_at']) > tonumber(now) then
    ended = ended + 1
  end
end
if client_id ~= '' then
  -- Every member has just been ended; members whose hash had expired are dropped here.
  redis.call('DEL', KEYS[2], KEYS[3])
end
sweep_revoked(prefix, now, tonumber(ARGV[5]))
return ended
