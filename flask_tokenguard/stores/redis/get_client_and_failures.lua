-- get_client_and_failures: what a client's authentication reads, in one round trip: the
-- client (by id, then by alias, as get_client) and the lockout counts of some keys.
-- KEYS[1] clients hash, KEYS[2] aliases hash, KEYS[3..] failure hashes. ARGV: id_or_alias
-- Returns {json or '', count, until, count, until, ...} ('' for a missing field).
local json = redis.call('HGET', KEYS[1], ARGV[1])
if not json then
  local client_id = redis.call('HGET', KEYS[2], ARGV[1])
  if client_id then
    json = redis.call('HGET', KEYS[1], client_id)
  end
end
local reply = {json or ''}
for i = 3, #KEYS do
  local fields = redis.call('HMGET', KEYS[i], 'count', 'until')
  reply[#reply + 1] = fields[1] or ''
  reply[#reply + 1] = fields[2] or ''
end
return reply
