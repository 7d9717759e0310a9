-- update_user: replace only an existing record (hashes have no HSET XX), atomically.
-- KEYS[1] users hash. ARGV: username, json
-- Returns 1 when replaced, 0 when there is no such user.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
