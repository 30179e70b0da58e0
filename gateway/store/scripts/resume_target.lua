-- Resume a paused or disabled target (resume.lua is loaded before this).
--
-- ARGV (DeliveryQueue.resume): prefix, target, now ms. Returns the state it had before.
local p, t, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local state = redis.call('HGET', p .. ':target:' .. t, 'state') or 'active'
resume(p, t, now)
return state
