-- delete_client: the record and its alias go together, so an alias never names nothing.
-- KEYS as create_client. ARGV: client_id
-- Returns 1 when deleted, 0 when absent.
local client_id = ARGV[1]
if redis.call('HDEL', KEYS[1], client_id) == 0 then
  return 0
end
local old = redis.call('HGET', KEYS[3], client_id)
if old and redis.call('HGET', KEYS[2], old) == client_id then
  redis.call('HDEL', KEYS[2], old)
end
redis.call('HDEL', KEYS[3], client_id)
return 1
