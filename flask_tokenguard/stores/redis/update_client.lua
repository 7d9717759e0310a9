-- update_client: the alias check and the replacement in one script (see create_client).
-- KEYS as create_client. ARGV: client_id, alias ('' = none), json
-- Returns 1 when replaced, 0 when there is no such client, -1 when the alias is taken.
local client_id, alias = ARGV[1], ARGV[2]

if redis.call('HEXISTS', KEYS[1], client_id) == 0 then
  return 0
end
if alias ~= '' then
  if alias ~= client_id and redis.call('HEXISTS', KEYS[1], alias) == 1 then
    return -1
  end
  local owner = redis.call('HGET', KEYS[2], alias)
  if owner and owner ~= client_id then
    return -1
  end
end
local old = redis.call('HGET', KEYS[3], client_id)
if old and redis.call('HGET', KEYS[2], old) == client_id then
  redis.call('HDEL', KEYS[2], old)
end
redis.call('HDEL', KEYS[3], client_id)
redis.call('HSET', KEYS[1], client_id, ARGV[3])
if alias ~= '' then
  redis.call('HSET', KEYS[2], alias, client_id)
  redis.call('HSET', KEYS[3], client_id, alias)
end
return 1
