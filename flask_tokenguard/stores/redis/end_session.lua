-- end_session: delete the session and its indexes, free its seat and record the revocation
-- in one script, so a session is never half ended.
-- KEYS[1] session hash
-- ARGV: prefix, sid, now, now_plus_1, sweep_limit, epoch candidate
-- Returns the HGETALL of what ended (empty if there was no session).
local prefix, sid, now, now_plus_1 = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local flat = end_one(prefix, sid, now, now_plus_1, ARGV[6])
sweep_revoked(prefix, now, tonumber(ARGV[5]))
return flat
