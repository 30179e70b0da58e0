-- A one-time token of "send test callback" (gateway/store/callbacks.py): its value, taken once.
-- ARGV: prefix, the token's sha256 hex digest.
local key = ARGV[1] .. ':callbacks:test:' .. ARGV[2]
local value = redis.call('GET', key)
if value then redis.call('DEL', key) end
return value
