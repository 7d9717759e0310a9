-- Signing keys: ensure (insert only if none), add (retire the others) and list (drop the
-- retired), each atomic, so processes opening a new store at once agree on one first key.
-- KEYS[1] order list (kids, insertion order), KEYS[2] keys hash (kid -> json without
-- retire_at), KEYS[3] retire hash (kid -> retire_at)
-- ARGV[1] is the operation:
--   'ensure', kid, json, retire_at ('' = none)
--   'add', kid, json, retire_at ('' = none), retire_others_at
--   'list', now
-- Returns {kid1, json1, retire_at1 or nil, ...} in insertion order ('add' returns {}).
local op = ARGV[1]

local function put(kid, json, retire_at)
  if redis.call('HEXISTS', KEYS[2], kid) == 0 then
    redis.call('RPUSH', KEYS[1], kid)
  end
  redis.call('HSET', KEYS[2], kid, json)
  if retire_at == '' then
    redis.call('HDEL', KEYS[3], kid)
  else
    redis.call('HSET', KEYS[3], kid, retire_at)
  end
end

if op == 'ensure' then
  if redis.call('LLEN', KEYS[1]) == 0 then
    put(ARGV[2], ARGV[3], ARGV[4])
  end
elseif op == 'add' then
  for _, kid in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    if redis.call('HEXISTS', KEYS[3], kid) == 0 then
      redis.call('HSET', KEYS[3], kid, ARGV[5])
    end
  end
  put(ARGV[2], ARGV[3], ARGV[4])
  return {}
end

local now = nil
if op == 'list' then
  now = tonumber(ARGV[2])
end
local out = {}
for _, kid in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local retire_at = redis.call('HGET', KEYS[3], kid)
  if now and retire_at and tonumber(retire_at) <= now then
    redis.call('LREM', KEYS[1], 0, kid)
    redis.call('HDEL', KEYS[2], kid)
    redis.call('HDEL', KEYS[3], kid)
  else
    out[#out + 1] = kid
    out[#out + 1] = redis.call('HGET', KEYS[2], kid)
    out[#out + 1] = retire_at
  end
end
return out
