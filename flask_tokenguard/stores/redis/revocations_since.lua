-- revocations_since: read the counter and the entries in one script, so the returned seq
-- covers exactly the entries returned.
-- KEYS[1] revoked_seq zset
-- ARGV: prefix, seq, now
-- Returns {current_seq, id1, expires_at1, id2, ...}.
local prefix, now = ARGV[1], tonumber(ARGV[3])
local out = {redis.call('GET', prefix .. 'revocation_seq') or '0'}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf')) do
  local exp = redis.call('ZSCORE', prefix .. 'revoked', id)
  if exp and tonumber(exp) > now then
    out[#out + 1] = id
    out[#out + 1] = exp
  end
end
return out
