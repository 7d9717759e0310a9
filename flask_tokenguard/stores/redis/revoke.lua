-- revoke: bump the counter and index the id in one script, so a reader never sees a seq
-- without its entry.
-- KEYS[1] revoked zset
-- ARGV: prefix, token_id, expires_at, now, sweep_limit, epoch candidate
local prefix = ARGV[1]
local seq = add_revocation(prefix, ARGV[2], ARGV[3], ARGV[6])
sweep_revoked(prefix, ARGV[4], tonumber(ARGV[5]))
return seq
