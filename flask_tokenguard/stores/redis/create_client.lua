-- create_client: check the id and alias against every id and alias, then insert, in one
-- script, so two administrators cannot both take a name.
-- KEYS[1] clients hash (id -> json), KEYS[2] aliases hash (alias -> id),
-- KEYS[3] alias_of hash (id -> alias)
-- ARGV: client_id, alias ('' = none), json
-- Returns 1 when inserted, 0 on a conflict.
local client_id, alias = ARGV[1], ARGV[2]

local function taken(name)
  return redis.call('HEXISTS', KEYS[1], name) == 1 or redis.call('HEXISTS', KEYS[2], name) == 1
end

if taken(client_id) or (alias ~= '' and taken(alias)) then
  return 0
end
redis.call('HSET', KEYS[1], client_id, ARGV[3])
if alias ~= '' then
  redis.call('HSET', KEYS[2], alias, client_id)
  redis.call('HSET', KEYS[3], client_id, alias)
end
return 1
