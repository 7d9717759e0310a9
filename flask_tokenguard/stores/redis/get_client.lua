-- get_client: by id, then by alias, in one round trip that a concurrent rename cannot split.
-- KEYS[1] clients hash, KEYS[2] aliases hash. ARGV: id_or_alias
-- Returns the client's json or nil.
local json = redis.call('HGET', KEYS[1], ARGV[1])
if json then
  return json
end
local client_id = redis.call('HGET', KEYS[2], ARGV[1])
if client_id then
  return redis.call('HGET', KEYS[1], client_id)
end
return false
