-- end_admin_session: read and delete in one script, so that exactly one caller gets the
-- session back.
-- KEYS[1] the admin session hash
-- Returns its HGETALL (empty when there was none).
local flat = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return flat
